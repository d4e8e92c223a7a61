"""On-demand mutation check (not part of the test suite; pytest collects nothing here).

    python -m tests.mutation                      # sampled run of every area, 90-minute budget
    python -m tests.mutation --area kernels --budget 30
    python -m tests.mutation --rerun mutation-report/results.json   # survivors of a previous run only

operators.py (Python mutation operators), cpp_mutants.py (hand-written C++ sampler mutations), targets.py (file ->
tests, exclusions, equivalent mutants), runner.py (scratch copy, pytest, rebuilds), report.py (results.json,
report.md). See README.md, "Testing".
"""
