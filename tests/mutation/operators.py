"""Python mutation operators: realistic one-token bugs, found with ``ast`` and applied as text replacements.

Each ``Mutant`` replaces one source span (an expression) with its mutated form, parenthesised, so the rest of the
file keeps its exact text (Triton re-parses a kernel's source: the mutated file must stay valid Python). Operators:

  num      integer constant +1 / -1; non-integral float * 1.01 (a typo in a constant); 0.0 / 1.0 / 2.0 ... + 1
  eps      a tiny float (0 < |x| < 1e-3: an epsilon) * 100
  cmp      comparison boundary flips: < <=, > >=, == !=, is / is not, in / not in
  arith    + <-> -, * <-> /
  bool     and <-> or, & <-> | (masks), `not x` -> x, True <-> False
  ifnot    an `if` test negated (the branch taken when it should not be)
  mask     a masked tl.load / tl.store loses its mask (and `other`)
  where    tl.where / torch.where(c, a, b) -> a (the guard dropped)
  minmax   minimum <-> maximum, min <-> max; and minimum(a, b) / maximum(a, b) / clamp -> a (a bound dropped)
  dtype    tl.int64 -> int32, float32 -> float16, torch int32 <-> int64, float16 <-> bfloat16, float32 -> float16;
           `.to(<dtype>)` dropped (an int64 offset or fp32 math left in the narrow type)
  slice    a non-constant slice bound off by one (upper - 1, lower + 1)

Not mutated: docstrings and other strings, annotations, decorators, `raise` statements (their messages),
``num_warps=`` / ``num_stages=`` values (speed only), and whatever ``targets.py`` excludes by name.
"""
from __future__ import annotations

import ast
import dataclasses
import math

DTYPE_SWAPS = {
    ("tl", "int64"): "tl.int32", ("tl", "float32"): "tl.float16",
    ("torch", "int32"): "torch.int64", ("torch", "int64"): "torch.int32", ("torch", "float32"): "torch.float16",
    ("torch", "float16"): "torch.bfloat16", ("torch", "bfloat16"): "torch.float16",
}
CMP_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
ARITH_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.BitAnd: ast.BitOr,
               ast.BitOr: ast.BitAnd}
PERF_ONLY_KEYWORDS = {"num_warps", "num_stages"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One mutation of one file: ``source[start:end]`` (character offsets) becomes ``replacement``."""

    path: str  # repository-relative, e.g. "kernels/gelu.py"
    function: str  # enclosing function ("<module>" at top level)
    operator: str
    line: int
    start: int
    end: int
    original: str
    replacement: str
    index: int = 0  # n-th identical (function, operator, original, replacement) in the file

    @property
    def id(self) -> str:
        """Stable across edits elsewhere in the file (no line numbers)."""
        return f"{self.path}::{self.function}::{self.operator}::{self.original} -> {self.replacement}#{self.index}"

    def apply(self, source: str) -> str:
        return source[:self.start] + self.replacement + source[self.end:]


class _Offsets:
    """ast positions (1-based line, UTF-8 byte column) -> character offsets into the source."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def __call__(self, line: int, col: int) -> int:
        text = self.lines[line - 1].encode("utf-8")[:col].decode("utf-8")
        return self.starts[line - 1] + len(text)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _float_mutation(x: float) -> tuple[str, float] | None:
    if x == 0.0 or not math.isfinite(x):
        return ("num", x + 1.0) if x == 0.0 else None
    if abs(x) < 1e-3:
        return "eps", x * 100.0
    if abs(x) >= 1e6:
        return None  # overflow guards (2e38 ...): `minmax` drops the guard instead
    if x == int(x):
        return "num", x + 1.0
    return "num", x * 1.01


class _Finder(ast.NodeVisitor):
    def __init__(self, path: str, source: str, skip_names: frozenset[str]) -> None:
        self.path, self.source, self.skip = path, source, skip_names
        self.off = _Offsets(source)
        self.stack: list[str] = []
        self.found: list[tuple[str, str, ast.AST, str]] = []  # (function, operator, node, replacement text)

    # ---- context ------------------------------------------------------------------------------------------
    def _function(self) -> str:
        return ".".join(self.stack) or "<module>"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in self.skip:
            return
        self.stack.append(node.name)
        for d in node.args.defaults + node.args.kw_defaults:
            if d is not None:
                self.visit(d)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # docstring
        for stmt in body:
            self.visit(stmt)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name in self.skip:
            return
        self.stack.append(node.name)
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign):
                continue  # dataclass field declarations
            self.visit(stmt)
        self.stack.pop()

    def visit_Assign(self, node: ast.Assign) -> None:
        names = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if names & self.skip or "__all__" in names:
            return
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name) and node.target.id in self.skip:
            return
        if node.value is not None:
            self.visit(node.value)

    def visit_Raise(self, node: ast.Raise) -> None:
        return  # error messages: not behaviour under test here

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):
            return  # docstrings, bare strings
        self.visit(node.value)

    def visit_Import(self, node) -> None:
        return

    visit_ImportFrom = visit_Import

    def _add(self, operator: str, node: ast.AST, replacement: ast.AST | str) -> None:
        if not self.stack and operator == "ifnot":
            return
        text = replacement if isinstance(replacement, str) else ast.unparse(replacement)
        self.found.append((self._function(), operator, node, f"({text})"))

    # ---- operators ----------------------------------------------------------------------------------------
    def visit_If(self, node: ast.If) -> None:
        self._add("ifnot", node.test, ast.UnaryOp(ast.Not(), node.test))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, bool):
            self._add("bool", node, repr(not v))
        elif isinstance(v, int):
            self._add("num", node, repr(v + 1))
            if v > 0:
                self._add("num", node, repr(v - 1))
        elif isinstance(v, float):
            m = _float_mutation(v)
            if m is not None:
                self._add(m[0], node, repr(m[1]))

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            swap = CMP_SWAPS.get(type(op))
            if swap is not None:
                ops = list(node.ops)
                ops[i] = swap()
                self._add("cmp", node, ast.Compare(node.left, ops, node.comparators))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = ARITH_SWAPS.get(type(node.op))
        both_const = isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant)
        strings = any(isinstance(s, (ast.JoinedStr,)) or (isinstance(s, ast.Constant) and isinstance(s.value, str))
                      for s in (node.left, node.right))
        if swap is not None and not both_const and not strings:
            op = "bool" if swap in (ast.BitAnd, ast.BitOr) else "arith"
            self._add(op, node, ast.BinOp(node.left, swap(), node.right))
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        swap = ARITH_SWAPS.get(type(node.op))
        if swap is not None and self.stack:
            self._add_stmt("arith", node, ast.AugAssign(node.target, swap(), node.value))
        self.generic_visit(node)

    def _add_stmt(self, operator: str, node: ast.AST, replacement: ast.AST) -> None:
        self.found.append((self._function(), operator, node, ast.unparse(replacement)))  # no parentheses

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add("bool", node, ast.BoolOp(other, node.values))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._add("bool", node, node.operand)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        swap = DTYPE_SWAPS.get((_dotted(node.value), node.attr))
        if swap is not None:
            self._add("dtype", node, swap)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else name
        kw = {k.arg: k for k in node.keywords}
        if name in ("tl.load", "tl.store") and "mask" in kw:
            keep = [k for k in node.keywords if k.arg not in ("mask", "other")]
            self._add("mask", node, ast.Call(node.func, node.args, keep))
        if name in ("tl.where", "torch.where") and len(node.args) == 3:
            self._add("where", node, node.args[1])
        swaps = {"minimum": "maximum", "maximum": "minimum", "min": "max", "max": "min", "amin": "amax",
                 "amax": "amin"}
        if attr in swaps and isinstance(node.func, (ast.Attribute, ast.Name)) and len(node.args) >= 1:
            func = (ast.Attribute(node.func.value, swaps[attr], ast.Load()) if isinstance(node.func, ast.Attribute)
                    else ast.Name(swaps[attr], ast.Load()))
            self._add("minmax", node, ast.Call(func, node.args, node.keywords))
            if attr in ("minimum", "maximum") and len(node.args) == 2:
                self._add("minmax", node, node.args[0])
        if attr in ("clamp", "clamp_") and isinstance(node.func, ast.Attribute):
            self._add("minmax", node, node.func.value)
        if attr == "to" and isinstance(node.func, ast.Attribute) and len(node.args) == 1 and \
                _dotted(node.args[0]).split(".")[0] in ("tl", "torch"):
            self._add("dtype", node, node.func.value)
        self.visit(node.func)
        for a in node.args:
            self.visit(a)
        for k in node.keywords:
            if k.arg not in PERF_ONLY_KEYWORDS:
                self.visit(k.value)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        sl = node.slice
        if isinstance(sl, ast.Slice):
            if sl.upper is not None and not isinstance(sl.upper, ast.Constant):
                self._add("slice", sl.upper, ast.BinOp(sl.upper, ast.Sub(), ast.Constant(1)))
            if sl.lower is not None and not isinstance(sl.lower, ast.Constant):
                self._add("slice", sl.lower, ast.BinOp(sl.lower, ast.Add(), ast.Constant(1)))
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        return  # annotations

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.body)


def find_mutants(path: str, source: str, *, skip_names: frozenset[str] = frozenset(),
                 parse_check: bool = True) -> list[Mutant]:
    """Every mutant of ``source`` (file ``path``, repository-relative) in source order; names in ``skip_names``
    (functions, classes, module-level assignments) are left alone. Mutants whose result does not parse are dropped
    (``parse_check=False`` keeps them: one parse of the file per mutant is most of the time this takes; the ids are
    the same either way)."""
    finder = _Finder(path, source, skip_names)
    finder.visit(ast.parse(source))
    out: list[Mutant] = []
    seen: dict[tuple, int] = {}
    for function, operator, node, text in finder.found:
        start = finder.off(node.lineno, node.col_offset)
        end = finder.off(node.end_lineno, node.end_col_offset)
        original = source[start:end]
        key = (function, operator, " ".join(original.split()), text)
        index = seen.get(key, 0)
        seen[key] = index + 1
        m = Mutant(path, function, operator, node.lineno, start, end, key[2], text, index)
        if parse_check:
            try:
                ast.parse(m.apply(source))
            except SyntaxError:
                continue
        out.append(m)
    out.sort(key=lambda m: (m.start, m.operator, m.replacement))
    return out
