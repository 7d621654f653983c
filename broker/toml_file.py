"""Reading the broker's TOML files (options, users) with one kind of error
for the operator: the file, and what is wrong with it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found]  # Python 3.10 only


def read_toml(path: Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """The document in `path` (the `what` file), or `error` saying why not."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as problem:
        raise error(f"cannot read the {what} file {path}: {problem.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path} is not valid TOML: {problem}") from None
