"""`toolrec-local eval` and `report` as real processes: JSON output, exit codes, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_eval import prepare_walk
from toolrec_local.eval.results import read_jsonl


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLREC_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "toolrec_local", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def walk_home(tmp_home):
    prepare_walk(tmp_home)
    return tmp_home


def test_eval_json_and_report(walk_home, tmp_path):
    out = tmp_path / "run"
    p = cli(walk_home, "eval", "--dataset", "walk", "--method", "pop", "--users", "30", "--seeds", "2", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["dataset"] == "walk" and set(data["methods"]) == {"pop"}
    pop = data["methods"]["pop"]
    assert set(pop["recall@10"]) == {"mean", "std"} and pop["users"]["ok"] == 60
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["pop"]["recall@10"] == pop["recall@10"]

    p = cli(walk_home, "report", str(out))
    assert p.returncode == 0, p.stderr
    md = (out / "report" / "report.md").read_text()
    assert "| pop |" in md and "**" in md and "± " in md
    png = out / "report" / "metrics-walk-no-llm.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.parametrize("args, message", [
    (["--method", "pop,bogus"], "unknown method"),
    (["--method", "tool:colour"], "no attribute 'colour'"),
    (["--method", "toolrec"], "need an LLM"),
    (["--method", "sasrec"], "checkpoint"),
    (["--method", "pop", "--shard", "3/2"], "bad --shard"),
    (["--method", "pop", "--history", "drop"], "unknown --history"),
])
def test_user_errors_exit_2_with_a_fix(walk_home, tmp_path, args, message):
    p = cli(walk_home, "eval", "--dataset", "walk", "--out", str(tmp_path / "run"), *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr and "fix:" in p.stderr


def test_unknown_dataset_and_bad_report_folder_exit_2(walk_home, tmp_path):
    p = cli(walk_home, "eval", "--dataset", "nope", "--method", "pop")
    assert p.returncode == 2 and "not prepared" in p.stderr
    p = cli(walk_home, "report", str(tmp_path))
    assert p.returncode == 2 and "not a run folder" in p.stderr


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_every_user_exactly_once(tmp_home, tmp_path):
    """A real process, killed with SIGKILL while it writes, then the same command again."""
    prepare_walk(tmp_home, n_users=20000)
    out = tmp_path / "run"
    args = ["eval", "--dataset", "walk", "--method", "pop", "--users", "20000", "--seeds", "3",
            "--batch-size", "1", "--out", str(out)]
    env = {**os.environ, "TOOLREC_HOME": str(tmp_home)}
    proc = subprocess.Popen([sys.executable, "-m", "toolrec_local", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.stat().st_size > 200_000:  # ~800 lines in
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = read_jsonl(results).records
    assert 0 < len(partial) < 60000

    p = cli(tmp_home, *args, "--json", timeout=300)
    assert p.returncode == 0, p.stderr
    recs = read_jsonl(results).records
    keys = [(r["method"], r["seed"], r["user"]) for r in recs]
    assert len(keys) == 60000 and len(set(keys)) == 60000
    assert all(r["status"] == "ok" for r in recs)
    # the killed run's lines were kept as they were, not redone
    assert [json.dumps(r, sort_keys=True) for r in recs[:len(partial)]] == [json.dumps(r, sort_keys=True) for r in partial]
    assert results.read_bytes().endswith(b"\n")
    assert json.loads(p.stdout)["methods"]["pop"]["users"] == {"ok": 60000, "failed": 0, "expected": 60000}


def test_a_second_writer_on_the_same_folder_is_refused(walk_home, tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        p = cli(walk_home, "eval", "--dataset", "walk", "--method", "pop", "--out", str(out))
    assert p.returncode == 2 and "another eval is writing" in p.stderr
