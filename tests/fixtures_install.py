"""The GPU install a user runs, resolved without installing: README "On a GPU"'s `pip install`
line with `--dry-run --report`, in a fresh venv (metadata only: no wheel is downloaded).

    def test_x(gpu_install_report): ...   # pip's installation report (JSON) as a dict

pip reads the metadata of ~200 packages from the index, one after another: about a minute of
mostly waiting on the network. So the dry run starts in the background as soon as a collected
test asks for it, and runs while the rest of the suite does; the fixture waits for its end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = "gpu_install_report"
_RUNS: dict = {}


def readme_gpu_commands() -> list[str]:
    """The command lines of the README's "On a GPU" bash block, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## On a GPU", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]


def readme_pip_install() -> list[str]:
    """The README's GPU `pip install` of the package: the arguments after `pip install`."""
    lines = [shlex.split(line, comments=True) for line in readme_gpu_commands()]
    found = [argv[2:] for argv in lines if argv[:2] == ["pip", "install"] and any("[gpu]" in a for a in argv)]
    assert len(found) == 1, f"README 'On a GPU' should install the gpu extra once: {lines}"
    return found[0]


class DryRun:
    """`pip install <README's arguments> --dry-run --report` for a fresh venv, in the background."""

    def __init__(self):
        args = readme_pip_install()
        self.dir = Path(tempfile.mkdtemp(prefix="toolrec-gpu-dry-run-"))
        self.report = self.dir / "report.json"
        venv = self.dir / "venv"
        try:
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        # This interpreter's pip, pointed at the fresh venv (--python): the venv has no pip of its own.
        self.cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    *args, "--dry-run", "--quiet", "--report", str(self.report)]
        self.log = open(self.dir / "pip.log", "w+")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a fresh venv sees nothing else
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 900) -> dict:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"pip's dry run took over {timeout:.0f} s: {shlex.join(self.cmd)}")
        self.log.seek(0)
        if rc != 0:
            pytest.fail(f"{shlex.join(self.cmd)} failed (exit {rc}):\n{self.log.read()[-3000:]}")
        return json.loads(self.report.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def pytest_collection_finish(session):
    if any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            _RUNS["gpu"] = DryRun()
        except Exception as exc:  # noqa: BLE001 - reported by the test that asked, not as a crash of pytest
            _RUNS["gpu"] = exc


def pytest_sessionfinish(session):
    run = _RUNS.pop("gpu", None)
    if isinstance(run, DryRun):
        run.close()


@pytest.fixture(scope="session")
def gpu_install_report() -> dict:
    if "gpu" not in _RUNS:  # collected some other way: start it now
        _RUNS["gpu"] = DryRun()
    run = _RUNS["gpu"]
    if isinstance(run, Exception):
        pytest.fail(f"the GPU dry run could not start: {run}")
    return run.wait()
