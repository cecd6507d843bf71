"""Where toolrec-local keeps datasets, checkpoints and models (TOOLREC_HOME)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

DEFAULT_HOME = Path("~/.cache/toolrec-local")


def home() -> Path:
    """The root folder: `--home`, else $TOOLREC_HOME, else ~/.cache/toolrec-local."""
    return Path(os.environ.get("TOOLREC_HOME") or DEFAULT_HOME).expanduser()


def set_home(path: str | Path) -> None:
    os.environ["TOOLREC_HOME"] = str(Path(path).expanduser().resolve())


def datasets_dir() -> Path:
    return home() / "datasets"


def dataset_dir(name: str) -> Path:
    return datasets_dir() / name


def checkpoints_dir(dataset: str) -> Path:
    return home() / "checkpoints" / dataset


def models_dir() -> Path:
    return home() / "models"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder next to `final`; on success it replaces `final` in one rename,
    on any error it is removed, so a half-written result never appears under TOOLREC_HOME."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
