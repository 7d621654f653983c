"""The build under test: CI runs the suite twice, on the pure-Python modules
and on the hot paths compiled by mypyc, and says which it means, so that a
build that fell back to Python cannot pass for the compiled one."""

from __future__ import annotations

import os

import pytest

from broker.compiled import HOT_MODULES, compiled_modules, describe


def test_the_suite_runs_on_the_build_ci_asked_for() -> None:
    build = os.environ.get("TEST_BUILD")
    if build is None:
        pytest.skip("TEST_BUILD=compiled or pure says which build this run tests (CI sets it)")
    assert build in ("compiled", "pure")
    assert compiled_modules() == (list(HOT_MODULES) if build == "compiled" else [])


def test_the_startup_line_names_the_build() -> None:
    compiled = compiled_modules()
    line = describe()
    if compiled:
        assert all(name in line for name in compiled)
    else:
        assert "pure Python" in line
