"""Where the project's files are, and how records name them.

data_dir()            data/ beside the package, or $SPONLIB_DATA
project_root()        the folder that holds data/ (the repository root in a checkout)
display_path(path)    a path as records and messages show it: relative to the project root
                      when it lies inside, so that a record's paths (and the command it
                      names) work from the repository root on any machine
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The project's data/ folder: $SPONLIB_DATA if set, else the one beside the package."""
    if os.environ.get("SPONLIB_DATA"):
        return Path(os.environ["SPONLIB_DATA"]).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def project_root() -> Path:
    """The folder data/ lies in: the repository root when sponlib runs from a checkout."""
    return data_dir().resolve().parent


def display_path(path: str | os.PathLike) -> str:
    """`path` relative to the project root when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)
