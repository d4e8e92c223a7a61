"""The corpus job: read, shard, embed in token-budget batches, write; across torch.distributed ranks.

One process, or N under ``torchrun`` (WORLD_SIZE > 1: the job joins the process group, gloo on the CPU and NCCL
on CUDA, each rank on cuda:LOCAL_RANK). Every rank reads the input once (checks it, hashes it, finds where
each shard starts); rank 0 checks or creates the output directory and writes the manifest; the shards still
to do are dealt round-robin to the ranks, each rank writing its own; rank 0 marks the job complete. A shard's
rows are sorted by length only inside the shard, so its vectors do not depend on which rank or run made them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.corpus import inputs, store
from engine.embed import DEFAULT_WINDOW, Embedder, Window, positive_int, prefetched

DEFAULT_SHARD_SIZE = DEFAULT_WINDOW  # items per shard, and per length-sorting window
OUTPUT_DTYPES = ("float32", "float16")
# the files of a model folder that decide its embeddings (hashed into the manifest)
_MODEL_FILES = ("*.json", "*/config.json", "*.safetensors", "pytorch_model*.bin", "vocab.txt", "merges.txt",
                "*.model")


@dataclasses.dataclass(frozen=True)
class CorpusResult:
    """What a corpus job did. ``rows``/``tokens``/``truncated`` cover the whole output (all runs);
    ``rows_now``/``tokens_now``/``seconds`` this run, all ranks together."""

    output: Path
    rows: int
    records: int
    skipped_empty: int
    replaced_utf8: int
    truncated: int
    tokens: int
    dim: int
    dtype: str
    max_length: int | None
    shards: int
    shards_now: int
    rows_now: int
    tokens_now: int
    seconds: float
    world_size: int

    def load(self, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (rows, dim), ids (rows,)): see ``load_embeddings``."""
        return store.load_embeddings(self.output, mmap=mmap)

    def summary(self) -> str:
        """One line: totals and this run's throughput."""
        rate = self.seconds if self.seconds > 0 else float("nan")
        extra = [f"{self.truncated} truncated to {self.max_length} tokens"]
        if self.skipped_empty:
            extra.append(f"{self.skipped_empty} empty skipped")
        if self.replaced_utf8:
            extra.append(f"{self.replaced_utf8} with invalid UTF-8 replaced")
        resumed = "" if self.shards_now == self.shards else f", {self.shards - self.shards_now} shards were done before"
        ranks = f" on {self.world_size} ranks" if self.world_size > 1 else ""
        return (f"embedded {self.rows_now} items ({self.tokens_now} tokens) in {self.seconds:.1f} s{ranks}: "
                f"{self.rows_now / rate:.0f} items/s, {self.tokens_now / rate:.0f} tokens/s; output {self.output}: "
                f"{self.rows} rows x {self.dim} {self.dtype} in {self.shards} shards{resumed} "
                f"({', '.join(extra)})")


# ---- torch.distributed ---------------------------------------------------------------------------------------
class Ranks:
    """This process's place in the job: rank, world size and the few collectives the job needs."""

    def __init__(self) -> None:
        dist = torch.distributed
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.owned = False

    @classmethod
    def join(cls, device: str | None) -> "Ranks":
        """Join the process group torchrun describes (WORLD_SIZE > 1) unless the caller already has one."""
        dist = torch.distributed
        if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            ranks = cls()
            ranks.owned = True
            return ranks
        return cls()

    def device(self, device: str | None) -> str:
        if device is not None:
            return str(device)
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{torch.cuda.current_device()}" if self.on else "cuda"

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def agree(self, fn: Callable[[], Any], *, only_rank0: bool = False) -> Any:
        """Run ``fn`` (on every rank, or on rank 0 with its result sent to all); a user error on any rank is
        raised on every rank, so none is left waiting in a collective."""
        result, error = None, None
        if not only_rank0 or self.rank == 0:
            try:
                result = fn()
            except (ValueError, TypeError, OSError) as exc:
                error = exc
        if not self.on:
            if error is not None:
                raise error
            return result
        msgs = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if bad:
            raise store.OutputError(f"rank {bad[0][0]} failed: {bad[0][1]}")
        if only_rank0:
            box = [result]
            torch.distributed.broadcast_object_list(box, src=0)
            result = box[0]
        return result

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---- hashes ---------------------------------------------------------------------------------------------------
def model_sha256(path: str | os.PathLike, *more: str | os.PathLike) -> str:
    """sha256 over the files of a model folder that decide its embeddings (configs, tokenizer, weights); ``more``:
    sub-folders read too (a sentence-transformers Transformer module kept in its own folder, Dense modules)."""
    root = Path(path)
    dirs = [root, *(Path(m) for m in more if m)]
    files = sorted({p for d in dirs for pattern in _MODEL_FILES for p in d.glob(pattern) if p.is_file()})
    h = hashlib.sha256()
    for p in files:
        h.update(os.path.relpath(p, root).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


# ---- the job --------------------------------------------------------------------------------------------------
def embed_corpus(model: str | os.PathLike | Embedder, input: str | os.PathLike, output: str | os.PathLike, *,
                 format: str | None = None, field: str | None = None, column: str | None = None,
                 pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                 max_length: int | None = None, prompt: str | None = None, batch_tokens: int | None = None,
                 shard_size: int = DEFAULT_SHARD_SIZE, output_dtype: str = "float32", on_empty: str = "skip",
                 encoding_errors: str = "strict", device: str | None = None, dtype: torch.dtype | str | None = None,
                 overwrite: bool = False, progress: bool | None = None) -> CorpusResult:
    """Embed every item of ``input`` into the directory ``output`` (shards + manifest; resumable).

    model: a model folder, or an Embedder (then pooling / normalize / max_length / prompt / device / dtype
    must stay None: they are the Embedder's). format: "text" | "jsonl" | "csv" | "tsv" (default: from the
    extension); field (jsonl, default "text"), column (csv/tsv, default "text"). pooling, normalize,
    max_length, prompt: override the checkpoint's sentence-transformers settings (see ``engine.embed``).
    batch_tokens: padded tokens per model call; shard_size: items per shard (and per length-sorting window);
    output_dtype: "float32" | "float16"; on_empty: "skip" | "error" | "keep"; encoding_errors: "strict" |
    "replace" (see ``engine.corpus.inputs``). overwrite: replace an output written for another model, input or
    options (without it that is refused). progress: a progress bar on stderr (None: only on a terminal; rank 0).
    Under torchrun the work is split across the ranks; the output is the same as one process's.
    Returns a CorpusResult; ``load_embeddings(output)`` reads the vectors and their record numbers.
    """
    positive_int("shard_size", shard_size)
    if batch_tokens is not None:
        positive_int("batch_tokens", batch_tokens)
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output_dtype must be one of {', '.join(OUTPUT_DTYPES)}; got {output_dtype!r}")
    spec = inputs.input_spec(input, format=format, field=field, column=column, on_empty=on_empty,
                             encoding_errors=encoding_errors)
    if isinstance(model, Embedder):
        given = {k: v for k, v in dict(pooling=pooling, normalize=normalize, max_length=max_length, prompt=prompt,
                                       device=device, dtype=dtype).items() if v is not None}
        if given:
            raise ValueError(f"{', '.join(given)} belong to the Embedder when model is one; set them there")
        if model.path is None:
            raise ValueError("the Embedder has no model folder (path) to hash into the manifest")
    ranks = Ranks.join(device)
    st = store.Store(output)
    try:
        if not isinstance(model, Embedder):
            model = ranks.agree(lambda: Embedder.from_pretrained(
                model, device=ranks.device(device), dtype=dtype, pooling=pooling, normalize=normalize,
                max_length=max_length, prompt=prompt))
        return _run(model, spec, st, ranks, batch_tokens=batch_tokens, shard_size=shard_size,
                    output_dtype=output_dtype, overwrite=overwrite, progress=progress)
    finally:
        st.release()
        ranks.close()


def _plan(emb: Embedder, spec: inputs.InputSpec, scan: inputs.Scan, *, shard_size: int, output_dtype: str) -> dict:
    s = emb.spec
    options = {**spec.options(), "pooling": list(s.pooling), "normalize": s.normalize, "max_length": s.max_length,
               "lower_case": s.lower_case, "prompt": s.prompt, "shard_size": shard_size,
               "compute_dtype": str(next(emb.model.parameters()).dtype).removeprefix("torch."),
               "output_dtype": output_dtype}
    rows = len(scan.ids)
    shards = [{"file": store.shard_name(k), "first_row": k * shard_size,
               "rows": min(shard_size, rows - k * shard_size)} for k in range(len(scan.starts))]
    from engine import __version__

    return {"kind": store.KIND, "version": store.VERSION,
            "identity": {"model_sha256": model_sha256(emb.path, s.model_dir, *(d.path for d in s.dense)),
                         "input_sha256": scan.sha256, "options": options},
            "model": str(emb.path), "input": spec.path, "input_bytes": scan.size, "records": scan.records,
            "rows": rows, "skipped_empty": scan.skipped, "replaced_utf8": scan.replaced, "dim": emb.dim,
            "shards": shards, "complete": False, "engine_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _run(emb: Embedder, spec: inputs.InputSpec, st: store.Store, ranks: Ranks, *, batch_tokens: int | None,
         shard_size: int, output_dtype: str, overwrite: bool, progress: bool | None) -> CorpusResult:
    t0 = time.perf_counter()
    scan = ranks.agree(lambda: inputs.scan(spec, shard_size=shard_size))
    manifest = ranks.agree(lambda: _plan(emb, spec, scan, shard_size=shard_size, output_dtype=output_dtype))
    seen = ranks.gather(manifest["identity"])
    for r, ident in enumerate(seen):  # against rank 0's (every rank holds the same list: the same message on all)
        if ident != seen[0]:
            what = "model" if ident["model_sha256"] != seen[0]["model_sha256"] else \
                "input" if ident["input_sha256"] != seen[0]["input_sha256"] else "options"
            raise store.OutputError(f"rank {r} sees another {what} than rank 0; every rank must read the same "
                                    "model folder, input file and options")
    pending = ranks.agree(lambda: st.prepare(manifest, scan.ids, overwrite=overwrite), only_rank0=True)

    def sees_manifest() -> None:  # every rank must see rank 0's manifest: the output directory is shared
        if ranks.rank != 0 and st.read_manifest()["identity"] != manifest["identity"]:
            raise store.OutputError(f"rank {ranks.rank} reads another manifest in {str(st.out)!r} than rank 0 "
                                    "wrote; the output must be on a file system every rank shares")

    ranks.agree(sees_manifest)
    mine = pending[ranks.rank::ranks.world]
    rows_of = [s["rows"] for s in manifest["shards"]]
    bar = None
    if ranks.rank == 0 and progress is not False:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(rows_of[k] for k in mine), unit="item", dynamic_ncols=True, file=sys.stderr,
                   disable=None if progress is None else False,
                   desc="embed" if ranks.world == 1 else f"embed (rank 0 of {ranks.world})")
    try:
        done_rows, done_tokens = _embed_shards(emb, spec, st, scan, mine, rows_of, batch_tokens=batch_tokens,
                                               output_dtype=output_dtype, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    counts = ranks.gather((done_rows, done_tokens))
    final = ranks.agree(lambda: st.finish(manifest), only_rank0=True)
    return CorpusResult(output=st.out, rows=final["rows"], records=final["records"],
                        skipped_empty=final["skipped_empty"], replaced_utf8=final["replaced_utf8"],
                        truncated=final["totals"]["truncated"], tokens=final["totals"]["tokens"], dim=final["dim"],
                        dtype=output_dtype, max_length=emb.spec.max_length, shards=len(rows_of),
                        shards_now=len(pending), rows_now=sum(c[0] for c in counts),
                        tokens_now=sum(c[1] for c in counts), seconds=time.perf_counter() - t0,
                        world_size=ranks.world)


def _embed_shards(emb: Embedder, spec: inputs.InputSpec, st: store.Store, scan: inputs.Scan, mine: list[int],
                  rows_of: list[int], *, batch_tokens: int | None, output_dtype: str, bar) -> tuple[int, int]:
    """Embed and write the shards ``mine``; the next shard is read and tokenized while this one runs."""
    def load(k: int) -> Window:
        return emb.prepare(inputs.read_shard(spec, scan.starts[k], rows_of[k]), batch_tokens=batch_tokens)

    t_start, tokens_total, rows_total = time.perf_counter(), 0, 0

    def on_batch(items: int, tokens: int) -> None:
        nonlocal tokens_total
        tokens_total += tokens
        store.fault("batch")
        if bar is not None:
            bar.update(items)
            bar.set_postfix_str(f"{tokens_total / max(time.perf_counter() - t_start, 1e-9):.0f} tokens/s",
                                refresh=False)

    for k, window in prefetched(mine, load):
        t0 = time.perf_counter()
        vecs = emb.run(window, on_batch=on_batch, cuda_graph=False).numpy()
        if output_dtype == "float16":
            big = float(np.abs(vecs).max())
            if not big <= np.finfo(np.float16).max:
                raise store.OutputError(f"shard {k} holds values up to {big:.4g}, beyond float16's range; "
                                        "use output_dtype float32 (or normalize)")
        st.write_shard(k, vecs.astype(output_dtype, copy=False),
                       {"rows": window.size, "tokens": window.tokens, "truncated": int(window.truncated.sum()),
                        "seconds": round(time.perf_counter() - t0, 3)})
        store.fault("shard")
        rows_total += window.size
    return rows_total, tokens_total
