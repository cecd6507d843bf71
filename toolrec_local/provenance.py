"""Which code made a result: the checkout's git commit, recorded beside benchmark and tune figures."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(where: Path | None = None) -> dict:
    """{"commit": HEAD, "dirty": whether tracked files differ from it} of the checkout holding
    `where` (default: this package's), each None outside a git checkout (an installed wheel)."""
    root = Path(where or Path(__file__).resolve().parent)

    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": None if status is None else bool(status)}
