"""The build under test: CI runs the suite twice, on the pure-Python modules
and on the hot paths compiled by mypyc, and says which it means, so that a
build that fell back to Python cannot pass for the compiled one. And
setup.py's ways to Python: asked, editable, or a compiler that fails."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from broker import wire
from broker.compiled import HOT_MODULES, compiled_modules, describe

ROOT = Path(__file__).resolve().parents[2]


def test_the_suite_runs_on_the_build_ci_asked_for() -> None:
    build = os.environ.get("TEST_BUILD")
    if build is None:
        pytest.skip("TEST_BUILD=compiled or pure says which build this run tests (CI sets it)")
    assert build in ("compiled", "pure")
    assert compiled_modules() == (list(HOT_MODULES) if build == "compiled" else [])


def test_the_codec_knows_its_own_build() -> None:
    """It picks how to add up payload sizes by it (a loop compiled, `sum` in Python)."""
    compiled = "broker.wire.frames" in compiled_modules()
    assert wire.COMPILED is compiled
    payloads = [b"a", b"bcd", b""]
    assert wire.total_size(payloads) == 4 and wire.payload_sizes(payloads) == [1, 3, 0]
    with pytest.raises(TypeError):
        wire.total_size([b"a", None])  # type: ignore[list-item]


def test_the_startup_line_names_the_build() -> None:
    compiled = compiled_modules()
    line = describe()
    if compiled:
        assert all(name in line for name in compiled)
    else:
        assert "pure Python" in line


def load_setup_script() -> ModuleType:
    """setup.py as a module (it builds only when run as a script)."""
    spec = importlib.util.spec_from_file_location("broker_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asking_for_pure_python_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    setup_script = load_setup_script()
    monkeypatch.setenv("TWISTED_BROKER_PURE_PYTHON", "1")
    assert setup_script.compiled_extensions() == []


def test_an_editable_install_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    setup_script = load_setup_script()
    monkeypatch.delenv("TWISTED_BROKER_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "editable_wheel", "--dist-info-dir", "x"])
    assert setup_script.compiled_extensions() == []


@pytest.mark.slow
def test_a_failing_c_compiler_leaves_the_pure_python_modules(tmp_path: Path) -> None:
    """mypyc generates the C, the compiler (here `false`) fails: the build
    says so, succeeds, and leaves no extension to shadow the .py files."""
    pytest.importorskip("mypyc.build")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "broker", tmp_path / "broker", ignore=shutil.ignore_patterns("*.so"))
    env = {k: v for k, v in os.environ.items() if k != "TWISTED_BROKER_PURE_PYTHON"}
    built = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env={**env, "CC": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "could not be built" in built.stderr
    assert "installing the pure-Python modules" in built.stderr
    assert list(tmp_path.rglob("*.so")) == []
    asked = subprocess.run(
        [sys.executable, "-c", "from broker.compiled import describe; print(describe())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "pure Python" in asked.stdout, asked.stderr
