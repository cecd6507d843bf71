"""`eval` against a real vLLM server (the tiny random model: noise, but valid under the
grammar) with the real ML-100K tools: every LLM method end to end, concurrent users, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from toolrec_local.eval.results import load_trajectory, read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def cli(home, *args):
    env = {**os.environ, "TOOLREC_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "toolrec_local", *args], env=env, capture_output=True, text=True,
                          timeout=900)


def test_llm_methods_against_a_real_server_then_resume(ml100k, ml100k_tools, session_home, vllm_server, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--dataset", "ml-100k", "--llm", "tiny-random", "--method", "pop,toolrec,llmrank,multi,plan",
            "--users", "4", "--seeds", "1", "--server", vllm_server.base_url, "--concurrency", "4",
            "--finish", "both", "--out", str(out), "--json"]
    p = cli(session_home, *args)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    recs = read_jsonl(out / "results.jsonl").records
    assert len(recs) == 7 * 4 and all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]  # + 2 last-list rows
    for r in recs:
        if r["method"] == "pop":
            continue
        assert r["llm_calls"] >= 1 and r["tokens_in"] > 0 and r["grammar_violations"] == 0
        assert len(r["final"]) == 10 and len(set(r["final"])) == 10
        assert load_trajectory(out, r["trajectory"]) is not None
    by_key = {(r["method"], r["user"]): r for r in recs}
    for r in (r for r in recs if r["method"] == "toolrec"):
        traj = load_trajectory(out, r["trajectory"])
        assert 1 <= r["rounds"] == len(traj["rounds"]) <= 8 and traj["final"] == r["final"]
        # the final step ranked the gathered lists on the server, under the grammar
        assert traj["finish"]["llm_calls"] >= 1 and traj["finish"]["grammar_violations"] == 0
        last = by_key[("toolrec/last-list", r["user"])]
        assert last["final"] == traj["last_list"]["final"] and last["llm_calls"] == r["llm_calls"] - traj["finish"]["llm_calls"]
    rounds = data["methods"]["toolrec"]["rounds"]
    assert sum(rounds["all"].values()) == 4
    assert data["methods"]["llmrank"]["llm"]["llm_calls_per_user"] >= 1

    before = (out / "results.jsonl").read_bytes()
    p = cli(session_home, *args)
    assert p.returncode == 0, p.stderr
    assert (out / "results.jsonl").read_bytes() == before  # nothing redone, nothing duplicated

    p = cli(session_home, "report", str(out))
    assert p.returncode == 0, p.stderr
    md = (out / "report" / "report.md").read_text()
    assert "| toolrec | all |" in md and "### LLM cost per user" in md
    assert "| toolrec/last-list |" in md and "| plan/last-list |" in md


def test_the_authors_condition_against_a_real_server(ml100k, ml100k_tools, session_home, vllm_server, tmp_path):
    """`--history keep --answer-space catalogue` end to end: the server constrains Rank and the
    final step to the whole catalogue outside the history (xgrammar, one line per request over
    ~1.6k options), and every final list is still N distinct catalogue items outside it."""
    out = tmp_path / "authors"
    args = ["eval", "--dataset", "ml-100k", "--llm", "tiny-random", "--method", "toolrec", "--users", "3", "--seeds", "1",
            "--server", vllm_server.base_url, "--concurrency", "3", "--history", "keep", "--answer-space", "catalogue",
            "--out", str(out), "--json"]
    p = cli(session_home, *args)
    assert p.returncode == 0, p.stderr
    recs = read_jsonl(out / "results.jsonl").records
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    beyond = 0
    for r in recs:
        traj = load_trajectory(out, r["trajectory"])
        history = set(traj["history"])
        assert len(r["final"]) == 10 == len(set(r["final"])) and not set(r["final"]) & history
        assert set(r["final"]) <= set(ml100k.item_ids[1:]) and r["grammar_violations"] == 0
        gathered = {i for rnd in traj["rounds"] for i in rnd["observation"]}
        beyond += len(set(r["final"]) - gathered)
        assert set(r["fallbacks"]) >= {"topup", "padded"} and r["fallbacks"]["topup"] == 0  # no top-up: the catalogue
    assert beyond > 0  # the random model answered items no tool returned: the catalogue grammar, not the gathered one
    run = json.loads((out / "run.json").read_text())
    assert run["answer_space"] == "catalogue" and run["history"] == "keep"
    p = cli(session_home, "report", str(out))
    assert p.returncode == 0, p.stderr
    md = (out / "report" / "report.md").read_text()
    assert "(`--history keep --answer-space catalogue`: the authors' condition)" in md
