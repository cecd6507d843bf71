"""The LLM methods through the runner with the real agent and a scripted backend."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from fixtures_eval import RuleTool, prepare_walk, rule_loader, scripted_agent
from toolrec_local.errors import ToolrecError
from toolrec_local.agent.baselines import multi_candidates
from toolrec_local.eval.catalog import build_llm_methods
from toolrec_local.agent.memory import interleave
from toolrec_local.eval.results import load_trajectory, read_jsonl
from toolrec_local.eval.session import EvalOptions, evaluate
from toolrec_local.llm.backends.scripted import ScriptedBackend

AGENT_TURNS = ["Thought: genre first.\nAction: Retrieval[genre, 20]",
               "Thought: and the plain recommender.\nAction: Retrieval[None, 20]",
               "Thought: rank them.\nAction: Rank[None, 10]",
               "Thought: good.\nAction: Finish"]
scripted_reply = scripted_agent(AGENT_TURNS)


@pytest.fixture
def walk(tmp_home):
    return prepare_walk(tmp_home)


def scripted_factory(holder):
    def factory(names, ds, tools, **kw):
        holder["backend"] = ScriptedBackend([scripted_reply] * 100_000)
        return build_llm_methods(names, ds, tools, **kw, backend_obj=holder["backend"])

    return factory


def test_every_llm_method_runs_through_the_runner(walk, tmp_path):
    holder = {}
    methods = "toolrec,toolrec-b,plan,llmrank,chatrec,single,multi"
    summary, folder = evaluate(
        EvalOptions.of(dataset="walk", methods=methods, llm="tiny", users=6, seeds=1, concurrency=4, out=tmp_path / "run"),
        tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    recs = read_jsonl(folder / "results.jsonl").records
    assert len(recs) == 7 * 6 and all(r["status"] == "ok" for r in recs), [r["error"] for r in recs if r["error"]]
    assert holder["backend"].closed
    by = lambda m: [r for r in recs if r["method"] == m]  # noqa: E731
    for r in by("toolrec"):
        assert r["rounds"] == 4 and len(r["final"]) == 10 and r["llm_calls"] == 6  # 4 turns, Rank, the final step
        with open(folder / r["trajectory"]["file"], "rb") as fh:
            fh.seek(r["trajectory"]["offset"])
            traj = json.loads(fh.readline())["trajectory"]
        assert [x["action"] for x in traj["rounds"]] == ["Retrieval[genre, 20]", "Retrieval[None, 20]", "Rank[None, 10]", "Finish"]
        assert traj["final"] == r["final"] and traj["target"] == r["target"]
    # the plan variant plans four steps, then executes them
    assert all(r["rounds"] == 4 for r in by("plan"))
    # llmrank: the scripted LLM keeps SASRec's order, and the rule tool puts the target first
    assert all(r["rank"] == 0 and r["llm_calls"] == 1 for r in by("llmrank"))
    assert summary["methods"]["llmrank"]["recall@10"]["mean"] == 1.0
    assert "rounds" not in summary["methods"]["llmrank"]  # one ranking call is not an agent run
    assert summary["methods"]["toolrec"]["rounds"]["all"] == {"4": 6}
    # ToolRec vs the best baseline present (llmrank here)
    assert summary["improvement"]["recall@10"]["over"] == "llmrank"


def test_llmrank_leaves_out_the_profile_and_chatrec_uses_it(walk, tmp_path):
    holder = {}
    evaluate(EvalOptions.of(dataset="walk", methods="llmrank", llm="tiny", users=3, seeds=1, out=tmp_path / "a"),
             tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    llmrank_prompts = [c.messages[-1]["content"] for c in holder["backend"].calls]
    evaluate(EvalOptions.of(dataset="walk", methods="chatrec", llm="tiny", users=3, seeds=1, out=tmp_path / "b"),
             tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    chatrec_prompts = [c.messages[-1]["content"] for c in holder["backend"].calls]
    assert all("The user:" not in p for p in llmrank_prompts)
    assert all("The user:" in p and "years old" in p for p in chatrec_prompts)
    # both rank SASRec's 30 candidates
    assert all(len(c.constraint.options) == 30 for c in holder["backend"].calls)


def test_multi_takes_from_each_tool_in_turn_30_distinct(walk):
    tool = RuleTool(walk)
    u = int(walk.sample_users(1, 0)[0])
    lists = multi_candidates(tool, u, ["genre", "release_year"], "test")
    assert [lst.mark for lst in lists] == ["Retrieval[None, 30]", "Retrieval[genre, 30]", "Retrieval[release_year, 30]"]
    items = interleave(lst.items for lst in lists)
    assert len(items) == 30 == len(set().union(*(lst.items for lst in lists)))
    hist, _ = walk.split(u, "test")
    assert not set(items) & set(hist.tolist())
    # the same merge Rank and the final step use: each tool's top items, taken in turn
    full = {attr: [i for i, _ in tool.retrieve(u, attr, 30)] for attr in (None, "genre", "release_year")}
    assert items == interleave(full.values(), 30)
    for lst, attr in zip(lists, full):
        assert full[attr][:10] == [i for i in full[attr] if i in set(lst.items)][:10]  # each tool's top 10 are in
        assert lst.scores == [s for i, s in tool.retrieve(u, attr, 30) if i in set(lst.items)]


def test_agent_methods_need_attribute_tools(walk, tmp_path):
    def bare_loader(ds, backbone="sasrec"):
        t = RuleTool(ds, backbone)
        t.attributes = []
        return t

    with pytest.raises(ToolrecError, match="attribute retrieval tools"):
        evaluate(EvalOptions.of(dataset="walk", methods="multi", llm="tiny", users=3, seeds=1, out=tmp_path / "x"),
                 tool_loader=bare_loader, llm_factory=lambda n, d, t, **kw: build_llm_methods(
                     n, d, t, **kw, backend_obj=ScriptedBackend([])))


def test_an_unreachable_server_is_one_clear_error(walk, tmp_path):
    """The real vLLM backend pointed at a closed port: refused before any user runs."""
    pytest.importorskip("openai")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    from toolrec_local.llm.backends.vllm import VLLMBackend

    def factory(names, ds, tools, **kw):
        be = VLLMBackend([f"http://127.0.0.1:{port}/v1"], "tiny", retries=0)
        return build_llm_methods(names, ds, tools, **kw, backend_obj=be)

    with pytest.raises(ToolrecError, match="cannot reach"):
        evaluate(EvalOptions.of(dataset="walk", methods="pop,llmrank", llm="tiny", users=3, seeds=1, out=tmp_path / "x"),
                 tool_loader=rule_loader, llm_factory=factory)
    # checked before any method runs: nothing written, nothing recorded as failed
    assert read_jsonl(tmp_path / "x" / "results.jsonl").records == []


def test_with_several_servers_each_user_sticks_to_one(walk, tmp_path):
    backends = [ScriptedBackend([scripted_reply] * 10_000, name=f"s{i}") for i in range(2)]

    def factory(names, ds, tools, **kw):
        return build_llm_methods(names, ds, tools, **kw, backend_obj=backends)

    evaluate(EvalOptions.of(dataset="walk", methods="toolrec,llmrank", llm="tiny", users=8, seeds=1, concurrency=4,
                         out=tmp_path / "run"), tool_loader=rule_loader, llm_factory=factory)
    assert all(b.closed for b in backends) and all(b.calls for b in backends)
    for i, b in enumerate(backends):
        # every prompt a server saw belongs to users it owns (the history block names the user's items)
        for call in b.calls:
            text = "\n".join(m["content"] for m in call.messages)
            owners = {u % 2 for u in walk.sample_users(8, 0) if last_history_line(walk, int(u)) in text}
            assert i in owners


def last_history_line(ds, user: int) -> str:
    """How every prompt names the user's most recent history item: "<name> (<year>)"."""
    item = int(ds.split(user, "test")[0][-1])
    return f"{ds.item_names[item]} ({ds.item_years[item]})"


def test_chatrec_has_its_own_prompt_and_single_the_rank_tools(walk, tmp_path):
    holder = {}
    sent = {}
    for i, method in enumerate(("chatrec", "single")):
        evaluate(EvalOptions.of(dataset="walk", methods=method, llm="tiny", users=3, seeds=1, out=tmp_path / method),
                 tool_loader=rule_loader, llm_factory=scripted_factory(holder))
        sent[method] = [c.messages for c in holder["backend"].calls]
        assert all(len(c.constraint.options) == 30 for c in holder["backend"].calls)  # SASRec's 30
    chat = [m[-1]["content"] for m in sent["chatrec"]]
    single = [m[-1]["content"] for m in sent["single"]]
    assert all("A recommender suggested these candidates" in p and "years old" in p for p in chat)
    assert all("A recommender suggested" not in p and "Please rank the 30 candidate movies" in p for p in single)
    assert {m[0]["content"] for m in sent["chatrec"]} != {m[0]["content"] for m in sent["single"]}


def slow_final_step(messages, constraint):
    """The scripted reply, 0.1 s slower on the final step (so its time shows in wall_s)."""
    if "final recommendation" in messages[-1]["content"]:
        time.sleep(0.1)
    return scripted_reply(messages, constraint)


def test_finish_both_writes_both_rows_from_one_trajectory(walk, tmp_path, monkeypatch):
    holder = {}
    out = tmp_path / "run"

    def factory(names, ds, tools, **kw):
        holder["backend"] = ScriptedBackend([slow_final_step] * 100_000)
        return build_llm_methods(names, ds, tools, **kw, backend_obj=holder["backend"])

    summary, folder = evaluate(
        EvalOptions.of(dataset="walk", methods="sasrec,toolrec,plan", llm="tiny", users=4, seeds=1, concurrency=1, out=out,
                    finish="both", temperature=0.5),
        tool_loader=rule_loader, llm_factory=factory)
    calls = len(holder["backend"].calls)
    assert calls == 2 * 4 * 6  # toolrec and plan: 4 turns (plans), Rank, the final step; no second run per variant
    assert all(c.temperature == 0.5 for c in holder["backend"].calls)
    recs = {(r["method"], r["user"]): r for r in read_jsonl(folder / "results.jsonl").records}
    assert list(summary["methods"]) == ["sasrec", "toolrec", "toolrec/last-list", "plan", "plan/last-list"]
    for (method, user), r in recs.items():
        if method not in ("toolrec", "plan"):
            continue
        last = recs[(method + "/last-list", user)]
        main_traj, last_traj = load_trajectory(folder, r["trajectory"]), load_trajectory(folder, last["trajectory"])
        assert main_traj["rounds"] == last_traj["rounds"]  # one trajectory, two answers
        assert last["final"] == main_traj["last_list"]["final"] == last_traj["final"]
        assert r["llm_calls"] == last["llm_calls"] + 1 and last["tokens_in"] < r["tokens_in"]
        assert r["wall_s"] - last["wall_s"] >= 0.09  # without the final step's time
        assert last["rounds"] == r["rounds"] == 4
    assert summary["methods"]["toolrec/last-list"]["llm"]["llm_calls_per_user"] == 5
    run = json.loads((folder / "run.json").read_text())
    assert run["finish"] == "both" and run["temperature"] == 0.5 and run["repeated_lists"] == "refer"
    assert run["methods"] == ["sasrec", "toolrec", "toolrec/last-list", "plan", "plan/last-list"]
    # both rows side by side in the report
    from toolrec_local.eval.report import summary_table, write_report

    md = write_report([folder])[0].read_text()
    rows = [line.split(" |")[0] for line in md.splitlines() if line.startswith("| toolrec")]
    assert rows[:2] == ["| toolrec", "| toolrec/last-list"]
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(summary_table(summary))
    assert "toolrec/last-list" in console.export_text()
    # the temperature is part of the run's identity
    with pytest.raises(ToolrecError, match="temperature"):
        evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=4, seeds=1, out=out, finish="both"),
                 tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    # and so is how repeated lists are shown (a folder from before the option listed them in full)
    with pytest.raises(ToolrecError, match="repeated_lists: 'refer' in the folder, 'full' now"):
        evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=4, seeds=1, out=out, finish="both",
                             temperature=0.5, repeated_lists="full"),
                 tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    with pytest.raises(ToolrecError, match="--repeated-lists"):
        evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=4, seeds=1, out=tmp_path / "x",
                             repeated_lists="once"), tool_loader=rule_loader, llm_factory=scripted_factory(holder))

    # and so is the prompt file: LLM results made under other prompts are not mixed into the run
    from toolrec_local.agent.prompts import load_prompts, prompts_dir

    same = EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=4, seeds=1, out=out, finish="both",
                       temperature=0.5)
    assert run["prompts"] == load_prompts("movies").fingerprint and len(run["prompts"]) == 12
    evaluate(same, tool_loader=rule_loader, llm_factory=scripted_factory(holder))  # the same prompts: continues
    changed = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), changed)
    text = (changed / "movies.yaml").read_text()
    (changed / "movies.yaml").write_text(text.replace("You rank movies for one user.", "You rank films for one user."))
    monkeypatch.setenv("TOOLREC_PROMPTS", str(changed))
    load_prompts.cache_clear()
    try:
        assert load_prompts("movies").fingerprint != run["prompts"]
        with pytest.raises(ToolrecError, match=f"prompts: '{run['prompts']}' in the folder") as err:
            evaluate(same, tool_loader=rule_loader, llm_factory=scripted_factory(holder))
        assert "prompt file" in err.value.hint
        # a folder written before the fingerprint was recorded cannot be continued either
        monkeypatch.delenv("TOOLREC_PROMPTS")
        load_prompts.cache_clear()
        old = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({k: v for k, v in old.items() if k != "prompts"}))
        with pytest.raises(ToolrecError, match="prompts: None in the folder"):
            evaluate(same, tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    finally:
        load_prompts.cache_clear()


def test_finish_last_list_rows_make_no_final_call(walk, tmp_path):
    holder = {}
    summary, folder = evaluate(
        EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=3, seeds=1, out=tmp_path / "run",
                    finish="last-list"),
        tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    recs = read_jsonl(folder / "results.jsonl").records
    assert {r["method"] for r in recs} == {"toolrec/last-list"} and len(recs) == 3
    assert all(r["llm_calls"] == 5 for r in recs)  # 4 turns + Rank
    for r in recs:  # today's answer: the Rank list (the last one stored), exactly
        traj = load_trajectory(folder, r["trajectory"])
        assert traj["finish_mode"] == "last-list" and traj["final"] == traj["rounds"][2]["observation"][:10]
    assert json.loads((folder / "run.json").read_text())["finish"] == "last-list"
    with pytest.raises(ToolrecError, match="--finish"):
        evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=3, seeds=1, out=tmp_path / "x",
                             finish="last"), tool_loader=rule_loader, llm_factory=scripted_factory(holder))


def test_another_finish_mode_in_the_same_folder_is_refused(walk, tmp_path):
    """`--finish` is part of a run's identity: rows of another mode (made from other
    trajectories) are never mixed into a folder, and the refusal says why."""
    holder = {}
    out = tmp_path / "run"
    opts = dict(dataset="walk", llm="tiny", users=3, seeds=1, out=out)
    evaluate(EvalOptions.of(**opts, methods="toolrec"), tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    before = (out / "results.jsonl").read_bytes()
    for finish in ("both", "last-list"):
        with pytest.raises(ToolrecError, match=f"finish: 'llm' in the folder, '{finish}' now") as err:
            evaluate(EvalOptions.of(**opts, methods="toolrec", finish=finish), tool_loader=rule_loader,
                     llm_factory=scripted_factory(holder))
        assert "one --finish mode" in err.value.hint
    assert (out / "results.jsonl").read_bytes() == before
    # methods without a final step do not care: llmrank joins, then toolrec continues as before
    evaluate(EvalOptions.of(**opts, methods="llmrank", finish="both"), tool_loader=rule_loader,
             llm_factory=scripted_factory(holder))
    evaluate(EvalOptions.of(**opts, methods="toolrec"), tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    assert json.loads((out / "run.json").read_text())["finish"] == "llm"


def test_llmrank_has_its_own_recency_prompt(walk, tmp_path):
    holder = {}
    evaluate(EvalOptions.of(dataset="walk", methods="llmrank", llm="tiny", users=2, seeds=1, out=tmp_path / "a"),
             tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    for call in holder["backend"].calls:
        prompt = call.messages[-1]["content"]
        user = next(u for u in walk.sample_users(2, 0) if last_history_line(walk, int(u)) in prompt)
        history, _ = walk.split(int(user), "test")
        names = [walk.item_names[int(i)] for i in history[-10:]]
        assert prompt.startswith("I have watched these movies, in this order:\n1. " + names[0])
        assert f"Note that my most recently watched movie is {names[-1]}:" in prompt
        assert "Rank these 30 movies" in prompt and "Retrieval[" not in prompt and "The user:" not in prompt
        assert call.messages[0]["content"].startswith("You are a movie recommender.")
        assert len(call.constraint.options) == 30


def test_the_agents_view_options_are_recorded_and_part_of_the_identity(walk, tmp_path):
    """--observe-items (default: whole lists), --max-rounds (default 7) and --demos (default
    3) reach the agent, are written to run.json, and a folder made under other values is
    refused on resume; a folder from before they were recorded ran 8 / 2 / 10."""
    holder = {}
    out = tmp_path / "run"
    opts = dict(dataset="walk", methods="toolrec", llm="tiny", users=2, seeds=1, out=out)
    evaluate(EvalOptions.of(**opts), tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    run = json.loads((out / "run.json").read_text())
    assert (run["observe_items"], run["max_rounds"], run["demos"]) == ("all", 7, 3)
    second = holder["backend"].calls[1].messages  # round 2 sees round 1's Retrieval[genre, 20] whole
    assert len(second[-1]["content"].splitlines()) == 21 and "more." not in second[-1]["content"]
    assert "Example 3:" in second[0]["content"]
    for change, field in ((dict(observe_items=5), "observe_items: 'all' in the folder, 5 now"),
                          (dict(max_rounds=8), "max_rounds: 7 in the folder, 8 now"),
                          (dict(demos=2), "demos: 3 in the folder, 2 now")):
        with pytest.raises(ToolrecError, match=field):
            evaluate(EvalOptions.of(**opts, **change), tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    cut = dict(opts, out=tmp_path / "cut")
    evaluate(EvalOptions.of(**cut, observe_items=5, max_rounds=2, demos=1), tool_loader=rule_loader,
             llm_factory=scripted_factory(holder))
    seen = holder["backend"].calls[1].messages
    assert seen[-1]["content"].splitlines()[1:] == seen[-1]["content"].splitlines()[1:6] + ["... and 15 more."]
    assert "Example 1:" in seen[0]["content"] and "Example 2:" not in seen[0]["content"]
    recs = read_jsonl(tmp_path / "cut" / "results.jsonl").records
    assert all(r["rounds"] == 2 for r in recs)  # the cap, then the forced final step
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (run["observe_items"], run["max_rounds"], run["demos"]) == (5, 2, 1)
    old = dict(run)
    for key in ("observe_items", "max_rounds", "demos"):
        del old[key]
    (tmp_path / "cut" / "run.json").write_text(json.dumps(old))
    with pytest.raises(ToolrecError, match="max_rounds: 8 in the folder, 2 now; demos: 2 in the folder, 1 now; "
                                           "observe_items: 10 in the folder, 5 now"):
        evaluate(EvalOptions.of(**cut, observe_items=5, max_rounds=2, demos=1), tool_loader=rule_loader,
                 llm_factory=scripted_factory(holder))
    with pytest.raises(ToolrecError, match="--observe-items"):
        evaluate(EvalOptions.of(**dict(opts, out=tmp_path / "bad"), observe_items=0), tool_loader=rule_loader,
                 llm_factory=scripted_factory(holder))
