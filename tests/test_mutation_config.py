"""The mutation check's configuration (tests/mutation: run by hand, not by pytest) still matches the tree: its
planted bug's anchor is in its file and its test exists, and every mutated file and judging test is there. (The
anchor once went stale after a kernel edit and the tool refused to start; this catches that in CI.) Every mutant
id its tables name is still a mutant of today's source: a renamed function or an edited line changes the id, and a
stale entry silently stops applying (two GPU_ONLY entries did after _gelu_fwd_kernel became _gelu_kernel)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.mutation import report, runner, targets
from tests.mutation.operators import find_mutants

ROOT = Path(__file__).resolve().parents[1]


def test_the_planted_bug_anchor_is_in_its_file():
    rel, old, new = runner.PLANTED
    source = (ROOT / rel).read_text()
    assert source.count(old) == 1, f"{rel} must hold runner.PLANTED's anchor exactly once: {old!r}"
    assert new != old and new.startswith(old)
    for test in runner.PLANTED_TEST:
        path, _, name = test.partition("::")
        assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), test


def test_every_target_and_judging_test_exists():
    for rel, (area, tests, sample) in targets.PY_TARGETS.items():
        assert (ROOT / rel).is_file(), rel
        assert area in report.AREAS and area != "csrc" and sample > 0, rel
        for test in tests:
            assert (ROOT / test).is_file(), (rel, test)
    for test in targets.CPP_TESTS:
        assert (ROOT / test).is_file(), test
    for table in (targets.SKIP, targets.EQUIVALENT, targets.GPU_ONLY, targets.KILLED_ELSEWHERE):
        for key in table:
            rel = key.split("::")[0]
            assert rel in targets.PY_TARGETS, key


def test_every_listed_mutant_id_is_still_a_mutant():
    mutants: dict[str, dict] = {}  # file -> {id: (mutant, source)}
    stale = []
    for name in ("EQUIVALENT", "GPU_ONLY", "KILLED_ELSEWHERE"):
        for key in getattr(targets, name):
            rel = key.split("::")[0]
            if rel not in mutants:
                source = (ROOT / rel).read_text()
                skip = frozenset(targets.SKIP.get(rel, {}))
                mutants[rel] = {m.id: (m, source) for m in find_mutants(rel, source, skip_names=skip,
                                                                         parse_check=False)}
            found = mutants[rel].get(key)
            if found is None:
                stale.append(f"{name}: {key}")
            else:  # the tool drops a mutant whose result does not parse: one listed here would never run
                m, source = found
                ast.parse(m.apply(source))
    assert not stale, "ids that match no mutant of the current source (update them):\n" + "\n".join(stale)


def test_every_skipped_name_is_defined_in_its_file():
    """SKIP names functions, classes and module-level assignments; one that is gone (moved or renamed) skips nothing."""
    for rel, names in targets.SKIP.items():
        defined = set()
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                defined.update(t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                               if isinstance(t, ast.Name))
        assert not set(names) - defined, (rel, sorted(set(names) - defined))
