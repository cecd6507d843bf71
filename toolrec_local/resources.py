"""The data folders shipped with the package: model cards (`models/`), what a vLLM server needs
beside the weights (`serving/`) and prompt templates (`prompts/`).

They live at the top of the repository (the architecture fixes that layout); a wheel carries
them as package data under `toolrec_local/_data/<name>` (pyproject.toml maps each folder there).
So an installed wheel reads its own copy, and a source checkout (editable install, or the
repository on PYTHONPATH) reads the repository's folders, which is what a developer edits.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FOLDERS = ("models", "serving", "prompts")


def data_dir(name: str) -> Path:
    """The folder `name` (one of FOLDERS): the wheel's package data, else the source tree's."""
    if name not in FOLDERS:
        raise ValueError(f"unknown data folder {name!r}; one of {FOLDERS}")
    packaged = Path(str(resources.files("toolrec_local") / "_data" / name))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / name
