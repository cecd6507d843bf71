"""`toolrec-local recommend` as a real process: user errors exit 2 with a fix; a full run
with trained tools and the tiny model in process prints the trajectory (Rich or JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_rule_dataset


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLREC_HOME": str(home), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "toolrec_local", "recommend", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rule_home(tmp_path_factory):
    """A home with the synthetic rule dataset and quickly trained SASRec tools (seconds)."""
    import torch

    from toolrec_local import data
    from toolrec_local.recsys.config import BackboneConfig, TrainConfig
    from toolrec_local.recsys.training.train import train_backbone, train_tool

    home = tmp_path_factory.mktemp("agent-cli-home")
    old = os.environ.get("TOOLREC_HOME")
    os.environ["TOOLREC_HOME"] = str(home)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data._CACHE.clear()
        ds = data.prepare("rule", source=synthetic_rule_dataset(home / "raw"))
        model, meta = train_backbone(ds, BackboneConfig("sasrec", ds.n_items, max_len=20, hidden=32), TrainConfig(epochs=2))
        for a in ds.attributes:
            train_tool(ds, a, model, meta, TrainConfig(epochs=1))
    finally:
        torch.set_num_threads(threads)
        data._CACHE.clear()
        if old is None:
            os.environ.pop("TOOLREC_HOME", None)
        else:
            os.environ["TOOLREC_HOME"] = old
    return home


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope", "--user", "1", "--llm", "tiny-random"], "is not prepared"),
    (["--dataset", "rule", "--user", "nobody", "--llm", "tiny-random"], "user 'nobody' is not in dataset"),
    (["--dataset", "rule", "--user", "u1", "--llm", "tiny-random", "--backend", "carrier-pigeon"], "unknown --backend"),
    (["--dataset", "rule", "--user", "u1", "--llm", "no-such-model"], "no-such-model"),
    (["--dataset", "rule", "--user", "u1", "--llm", "tiny-random", "--part", "train"], "unknown --part"),
])
def test_user_errors_exit_2_with_a_fix(rule_home, args, message):
    p = cli(rule_home, *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr and "fix:" in p.stderr


@pytest.mark.parametrize("text, message", [
    ("", "movies.yaml: empty"),
    ("demos: 3\n", "movies.yaml: missing templates"),
])
def test_a_broken_prompt_file_exits_2_naming_it(rule_home, tmp_path, monkeypatch, text, message):
    (tmp_path / "movies.yaml").write_text(text)
    monkeypatch.setenv("TOOLREC_PROMPTS", str(tmp_path))
    p = cli(rule_home, "--dataset", "rule", "--user", "u1", "--llm", "tiny-random")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {tmp_path}/{message}") and "fix:" in p.stderr


def test_without_trained_tools_says_how_to_train(tmp_home):
    from toolrec_local import data

    data.prepare("rule", source=synthetic_rule_dataset(tmp_home / "raw"))
    p = cli(tmp_home, "--dataset", "rule", "--user", "u1", "--llm", "tiny-random")
    assert p.returncode == 2 and "fix:" in p.stderr, p.stderr


@pytest.mark.slow
def test_full_run_with_the_tiny_model_in_process(rule_home, tiny_model_dir):
    common = ["--dataset", "rule", "--user", "u7", "--llm", "tiny-random", "--backend", "local",
              "--model-path", str(tiny_model_dir), "--max-rounds", "3", "--demos", "0"]  # the demonstrations use genre
    p = cli(rule_home, *common, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["user"] == "u7" and d["target"].startswith("i")
    assert len(d["final"]) == 10 == len(set(d["final"])) and not set(d["final"]) & set(d["history"])
    assert 1 <= len(d["rounds"]) <= 3
    for r in d["rounds"]:
        assert {"thought", "action", "observation", "tokens_in", "tokens_out", "latency_s", "retries", "repairs"} <= set(r)
        assert r["grammar_violations"] == 0 and r["tokens_in"] > 0
    # the final step: the LLM ranked what was gathered, under the item-list grammar
    assert d["finish_mode"] == "llm" and d["finish"]["llm_calls"] >= 1 and d["finish"]["grammar_violations"] == 0
    assert d["finish"]["observation"] == d["final"] and len(d["last_list"]["final"]) == 10
    p = cli(rule_home, *common)
    assert p.returncode == 0, p.stderr
    assert "Round 1" in p.stdout and "Top 10" in p.stdout and "Target" in p.stdout
    assert "Final step: the LLM ranks every gathered list" in p.stdout
