"""The build's one step beyond pyproject.toml: the broker's hot paths, the
wire codec and the delivery window, compiled to C extensions by mypyc.

The compiled modules are an accelerated build of the same source, never a
second implementation: the `.py` files are installed beside them and are
what runs wherever no extension was built. So the build falls back to pure
Python, with a warning, when mypyc or a C compiler is missing or fails;
`TWISTED_BROKER_PURE_PYTHON=1` skips the compilation on purpose. Then:

    pip install .                          # compiled where it can be
    TWISTED_BROKER_PURE_PYTHON=1 pip install .     # pure Python
    pip install -e .                       # pure Python: for editing
    python setup.py build_ext --inplace    # compiled, in the source tree
                                           # (delete the .so files to edit)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker.compiled import HOT_MODULES

HOT_PATHS = [name.replace(".", "/") + ".py" for name in HOT_MODULES]

# Type-checking stops at these modules: the rest of the broker and its
# dependencies are read for their types where present, their errors are not
# this build's business (CI's `mypy` checks them), and a missing one is Any.
MYPY_OPTIONS = ["--follow-imports=silent", "--ignore-missing-imports"]


def warn(message: str) -> None:
    print(f"twisted-broker: {message}; installing the pure-Python modules", file=sys.stderr)


def compiled_extensions() -> list:
    """mypyc's extensions for the hot modules, or none (pure Python)."""
    if os.environ.get("TWISTED_BROKER_PURE_PYTHON", "") not in ("", "0"):
        return []
    if "editable_wheel" in sys.argv:
        # `pip install -e .` is for editing: an extension built into the tree
        # would shadow the edited .py until rebuilt.
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc is not installed")
        return []
    try:
        return mypycify([*MYPY_OPTIONS, *HOT_PATHS], opt_level="3", group_name="broker")
    except (Exception, SystemExit) as error:  # mypyc reports a type error by exiting
        warn(f"mypyc could not compile the hot paths ({error!r})")
        return []


class OptionalBuildExt(build_ext):
    """Builds the extensions all or none: a C compiler that fails leaves the
    pure-Python modules alone, never half of a compiled group."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # distutils' CompileError, LinkError, PlatformError...
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            warn(f"the C extensions could not be built ({error!r})")


if __name__ == "__main__":  # as pip's build backend and `python setup.py` run it
    setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
