"""Benchmark suites (a package so their module names cannot collide with tests/ files of the same name)."""
