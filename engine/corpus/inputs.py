"""Reading a corpus file: plain text (one item a line), JSON lines (a field) or CSV / TSV (a column).

What a record is, and what happens to bad input (errors name the file and the 1-based line):
- text, jsonl: a record is a line (ended by "\\n"; a trailing "\\r" is dropped; other Unicode line breaks stay
  inside the line). Record numbers are 0-based line indices. A UTF-8 byte-order mark on line 1 is dropped.
- csv, tsv: the first row is the header; a record is a data row (blank lines are not rows, as in Python's
  csv.DictReader and pandas). Record numbers are 0-based data-row indices. A row whose cell count differs from
  the header's is an error (an unquoted delimiter would otherwise shift the cells).
- jsonl: a line that is not a JSON object, lacks the field, or holds a non-string there is an error; a blank
  line is an empty item.
- Bytes that are not UTF-8: an error (``encoding_errors="strict"``, the default) or replaced by U+FFFD and
  counted (``"replace"``).
- Empty items (nothing but whitespace): ``on_empty="skip"`` (default) leaves them out and counts them,
  ``"error"`` stops at the first, ``"keep"`` embeds them as sentence-transformers does (the empty string).
  Skipped items never shift rows silently: every output row carries its record number (ids.npy).
- A file with no item to embed is an error.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np

FORMATS = ("text", "jsonl", "csv", "tsv")
EXTENSIONS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
ON_EMPTY = ("skip", "error", "keep")
ENCODING_ERRORS = ("strict", "replace")


class InputError(ValueError):
    """Bad input or input options: names the file, the line and what was expected."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Where the items are and how to read them (``input_spec`` checks and fills the defaults)."""

    path: str
    format: str
    field: str | None = None  # jsonl
    column: str | None = None  # csv / tsv
    on_empty: str = "skip"
    encoding_errors: str = "strict"

    def options(self) -> dict:
        """The reading options that decide which rows come out (recorded in the manifest)."""
        return {"format": self.format, "field": self.field, "column": self.column, "on_empty": self.on_empty,
                "encoding_errors": self.encoding_errors}


def input_spec(path: str | os.PathLike, *, format: str | None = None, field: str | None = None,
               column: str | None = None, on_empty: str = "skip", encoding_errors: str = "strict") -> InputSpec:
    """Check the input options. format None: from the extension (.jsonl/.ndjson, .csv, .tsv; else text)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input file {str(p)!r} not found" if not p.exists() else
                         f"input {str(p)!r} is not a regular file")
    fmt = format or EXTENSIONS.get(p.suffix.lower(), "text")
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if field is not None and fmt != "jsonl":
        raise InputError(f"field applies to jsonl input; {str(p)!r} is read as {fmt}")
    if column is not None and fmt not in ("csv", "tsv"):
        raise InputError(f"column applies to csv / tsv input; {str(p)!r} is read as {fmt}")
    if on_empty not in ON_EMPTY:
        raise InputError(f"on_empty must be one of {', '.join(ON_EMPTY)}; got {on_empty!r}")
    if encoding_errors not in ENCODING_ERRORS:
        raise InputError(f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}; got {encoding_errors!r}")
    if fmt == "jsonl":
        field = "text" if field is None else field
    if fmt in ("csv", "tsv"):
        column = "text" if column is None else column
    return InputSpec(str(p), fmt, field, column, on_empty, encoding_errors)


@dataclasses.dataclass(frozen=True)
class Position:
    """Where reading resumes: byte offset, the record number and 1-based line number found there."""

    offset: int = 0
    record: int = 0
    line: int = 1


@dataclasses.dataclass(frozen=True)
class Record:
    """One record: where it starts, its text (None when empty), and whether bytes were replaced in it."""

    at: Position
    text: str | None
    replaced: bool = False


class _Lines:
    """Raw lines of a file from a Position, decoded (line endings kept); optional sha256 of the bytes read.

    After each line: ``start`` / ``start_line`` say where it began, ``offset`` / ``line`` where the next one
    begins. ``take_replaced()``: whether a line read since its last call needed U+FFFD replacements (a CSV record
    can span several lines: any of them counts)."""

    def __init__(self, spec: InputSpec, f, start: Position, hasher=None) -> None:
        self.spec, self.f, self.hasher = spec, f, hasher
        self.offset, self.line = start.offset, start.line
        self.start, self.start_line = start.offset, start.line
        self.replaced = False

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            if self.hasher is not None:
                self.hasher.update(raw)
            self.start, self.start_line = self.offset, self.line
            self.offset += len(raw)
            self.line += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if self.spec.encoding_errors == "strict":
                    raise InputError(
                        f"{self.spec.path}:{self.start_line}: not valid UTF-8 ({exc.reason} at byte {exc.start} "
                        "of the line); fix the file or pass encoding_errors='replace' (--encoding-errors replace)"
                    ) from None
                text = raw.decode("utf-8", errors="replace")
                self.replaced = True
            if self.start == 0 and text.startswith("\ufeff"):
                text = text[1:]
            yield text

    def take_replaced(self) -> bool:
        """Whether a line read since the last call needed U+FFFD replacements; starts over."""
        replaced, self.replaced = self.replaced, False
        return replaced


def _empty(text: str | None) -> bool:
    return text is None or not text.strip()


def records(spec: InputSpec, *, start: Position = Position(), hasher=None) -> Iterator[Record]:
    """Every record of the file from ``start`` (a Position an earlier pass returned, or the file's start).

    ``hasher`` (a hashlib object) is fed every byte read. Raises InputError at the first bad record.
    """
    with open(spec.path, "rb") as f:
        f.seek(start.offset)
        lines = _Lines(spec, f, start, hasher)
        if spec.format in ("csv", "tsv"):
            yield from _csv_records(spec, lines, start)
            return
        record = start.record
        for text in lines:
            at = Position(lines.start, record, lines.start_line)
            replaced = lines.take_replaced()
            text = text[:-1] if text.endswith("\n") else text
            text = text[:-1] if text.endswith("\r") else text
            if spec.format == "jsonl":
                text = _json_field(spec, text, at.line)
            yield Record(at, text, replaced)
            record += 1


def _json_field(spec: InputSpec, line: str, line_no: int) -> str | None:
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{spec.path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{spec.path}:{line_no}: expected a JSON object with a {spec.field!r} field; "
                         f"got a {type(obj).__name__}")
    if spec.field not in obj:
        keys = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise InputError(f"{spec.path}:{line_no}: no field {spec.field!r} (fields: {keys}); choose one with "
                         "field= (--field)")
    value = obj[spec.field]
    if not isinstance(value, str):
        raise InputError(f"{spec.path}:{line_no}: field {spec.field!r} holds a {type(value).__name__}, "
                         "not a string")
    return value


def _csv_records(spec: InputSpec, lines: _Lines, start: Position) -> Iterator[Record]:
    delimiter = "\t" if spec.format == "tsv" else ","
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header_file = None if start.offset == 0 else open(spec.path, "rb")
    try:  # the header: read here, or from the file's start when resuming in the middle
        header_reader = reader if header_file is None else csv.reader(
            _Lines(spec, header_file, Position()), delimiter=delimiter, strict=True)
        header = _next_row(spec, header_reader, lines if header_file is None else None)
    finally:
        if header_file is not None:
            header_file.close()
    lines.take_replaced()  # the header's replacements belong to no record
    if header is None:
        return
    if spec.column not in header:
        raise InputError(f"{spec.path}:1: no column {spec.column!r} in the header (columns: "
                         f"{', '.join(map(repr, header[:12]))}); choose one with column= (--column)")
    col = header.index(spec.column)
    record = start.record
    while True:
        at_offset, at_line = lines.offset, lines.line
        row = _next_row(spec, reader, lines)
        replaced = lines.take_replaced()  # any of the row's lines
        if row is None:
            return
        if not row:  # a blank line is not a row
            continue
        at = Position(at_offset, record, at_line)
        if len(row) != len(header):
            raise InputError(f"{spec.path}:{at_line}: {len(row)} cells where the header has {len(header)} "
                             "(an unquoted delimiter or a missing cell)")
        yield Record(at, row[col], replaced)
        record += 1


def _next_row(spec: InputSpec, reader, lines: _Lines | None) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        where = f":{lines.start_line}" if lines is not None else ""
        raise InputError(f"{spec.path}{where}: bad CSV ({exc})") from None


# ---- the first pass ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scan:
    """What one pass over the input found.

    ids: int64 (rows,) record number of each item to embed, in file order; starts: where each shard of
    ``shard_size`` items begins; skipped: empty items left out; replaced: items with U+FFFD replacements."""

    sha256: str
    size: int
    records: int
    ids: np.ndarray
    starts: list[Position]
    skipped: int
    replaced: int
    first_skipped: int | None  # 1-based line of the first skipped item


def scan(spec: InputSpec, *, shard_size: int) -> Scan:
    """Read the whole input once: check every record, hash the bytes, find the items and the shard starts."""
    hasher = hashlib.sha256()
    ids, starts = array("q"), []
    skipped = replaced = records_seen = 0
    first_skipped = None
    for rec in records(spec, hasher=hasher):
        records_seen += 1
        replaced += rec.replaced
        if _empty(rec.text) and spec.on_empty != "keep":
            if spec.on_empty == "error":
                raise InputError(f"{spec.path}:{rec.at.line}: empty item (record {rec.at.record}); pass "
                                 "on_empty='skip' or 'keep' (--on-empty) to skip or embed empty items")
            skipped += 1
            first_skipped = rec.at.line if first_skipped is None else first_skipped
            continue
        if len(ids) % shard_size == 0:
            starts.append(rec.at)
        ids.append(rec.at.record)
    if not ids:
        what = "is empty" if records_seen == 0 else f"has no non-empty item ({skipped} empty skipped)"
        raise InputError(f"input {spec.path!r} {what}: nothing to embed")
    return Scan(hasher.hexdigest(), os.path.getsize(spec.path), records_seen, np.frombuffer(ids, dtype=np.int64)
                .copy(), starts, skipped, replaced, first_skipped)


def read_shard(spec: InputSpec, start: Position, count: int) -> list[str]:
    """The texts of ``count`` items from ``start`` (a shard start found by ``scan``), empty ones as ""."""
    out: list[str] = []
    for rec in records(spec, start=start):
        if _empty(rec.text):
            if spec.on_empty != "keep":
                continue
            out.append(rec.text or "")
        else:
            out.append(rec.text)
        if len(out) == count:
            break
    if len(out) != count:
        raise InputError(f"input {spec.path!r} changed while it was being read (a shard came up short); "
                         "rerun on a file that stays put")
    return out
