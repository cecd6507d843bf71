"""The LLM methods through the runner with the real agent and a scripted backend."""

from __future__ import annotations

import json

import pytest

from fixtures_eval import RuleTool, prepare_walk, rule_loader
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.llm_methods import build_llm_methods, multi_candidates, shares
from toolrec_local.eval.results import read_jsonl
from toolrec_local.eval.session import EvalOptions, evaluate
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import ActionGrammar, ItemListGrammar

AGENT_TURNS = ["Thought: genre first.\nAction: Retrieval[genre, 20]",
               "Thought: and the plain recommender.\nAction: Retrieval[None, 20]",
               "Thought: rank them.\nAction: Rank[None, 10]",
               "Thought: good.\nAction: Finish"]


def scripted_reply(messages, constraint):
    """Agent turns by round (counted from the assistant turns so far); Rank: the first k options."""
    if isinstance(constraint, ItemListGrammar):
        return "\n".join(constraint.options[: constraint.k])
    assert isinstance(constraint, ActionGrammar)
    done = sum(1 for m in messages if m["role"] == "assistant")
    return AGENT_TURNS[min(done, len(AGENT_TURNS) - 1)]


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
        EvalOptions(dataset="walk", methods=methods, llm="tiny", users=6, seeds=1, concurrency=4, out=tmp_path / "run"),
        tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    recs = read_jsonl(folder / "results.jsonl").records
    assert len(recs) == 7 * 6 and all(r["status"] == "ok" for r in recs), [r["error"] for r in recs if r["error"]]
    assert holder["backend"].closed
    by = lambda m: [r for r in recs if r["method"] == m]  # noqa: E731
    for r in by("toolrec"):
        assert r["rounds"] == 4 and len(r["final"]) == 10 and r["llm_calls"] == 5  # 4 turns + 1 Rank call
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
    evaluate(EvalOptions(dataset="walk", methods="llmrank", llm="tiny", users=3, seeds=1, out=tmp_path / "a"),
             tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    llmrank_prompts = [c.messages[-1]["content"] for c in holder["backend"].calls]
    evaluate(EvalOptions(dataset="walk", methods="chatrec", llm="tiny", users=3, seeds=1, out=tmp_path / "b"),
             tool_loader=rule_loader, llm_factory=scripted_factory(holder))
    chatrec_prompts = [c.messages[-1]["content"] for c in holder["backend"].calls]
    assert all("The user:" not in p for p in llmrank_prompts)
    assert all("The user:" in p and "years old" in p for p in chatrec_prompts)
    # both rank SASRec's 30 candidates
    assert all(len(c.constraint.options) == 30 for c in holder["backend"].calls)


def test_multi_takes_an_equal_share_from_each_tool_30_distinct(walk):
    tool = RuleTool(walk)
    u = int(walk.sample_users(1, 0)[0])
    groups = multi_candidates(tool, u, ["genre", "release_year"], "test")
    assert [m for m, _ in groups] == ["Retrieval[None, 10]", "Retrieval[genre, 10]", "Retrieval[release_year, 10]"]
    items = [i for _, xs in groups for i in xs]
    assert len(items) == 30 == len(set(items))
    hist, _ = walk.split(u, "test")
    assert not set(items) & set(hist.tolist())
    # SASRec's share is its own top 10, in order
    assert groups[0][1] == [i for i, _ in tool.retrieve(u, None, 10)]
    assert shares(30, 4) == [8, 8, 7, 7] and sum(shares(30, 3)) == 30


def test_agent_methods_need_attribute_tools(walk, tmp_path):
    def bare_loader(ds, backbone="sasrec"):
        t = RuleTool(ds, backbone)
        t.attributes = []
        return t

    with pytest.raises(ToolrecError, match="attribute retrieval tools"):
        evaluate(EvalOptions(dataset="walk", methods="multi", llm="tiny", users=3, seeds=1, out=tmp_path / "x"),
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
        evaluate(EvalOptions(dataset="walk", methods="pop,llmrank", llm="tiny", users=3, seeds=1, out=tmp_path / "x"),
                 tool_loader=rule_loader, llm_factory=factory)
    # checked before any method runs: nothing written, nothing recorded as failed
    assert read_jsonl(tmp_path / "x" / "results.jsonl").records == []


def test_with_several_servers_each_user_sticks_to_one(walk, tmp_path):
    backends = [ScriptedBackend([scripted_reply] * 10_000, name=f"s{i}") for i in range(2)]

    def factory(names, ds, tools, **kw):
        return build_llm_methods(names, ds, tools, **kw, backend_obj=backends)

    evaluate(EvalOptions(dataset="walk", methods="toolrec,llmrank", llm="tiny", users=8, seeds=1, concurrency=4,
                         out=tmp_path / "run"), tool_loader=rule_loader, llm_factory=factory)
    assert all(b.closed for b in backends) and all(b.calls for b in backends)
    for i, b in enumerate(backends):
        # every prompt a server saw belongs to users it owns (the history block names the user's items)
        for call in b.calls:
            text = "\n".join(m["content"] for m in call.messages)
            owners = {u % 2 for u in walk.sample_users(8, 0) if last_history_line(walk, int(u)) in text}
            assert i in owners


def last_history_line(ds, user: int) -> str:
    """How the prompt starts the user's most recent history item: "<id>, <name> (<year>)"."""
    item = int(ds.split(user, "test")[0][-1])
    return f"{ds.item_ids[item]}, {ds.item_names[item]} ({ds.item_years[item]})"


def test_chatrec_has_its_own_prompt_and_single_the_rank_tools(walk, tmp_path):
    holder = {}
    sent = {}
    for i, method in enumerate(("chatrec", "single")):
        evaluate(EvalOptions(dataset="walk", methods=method, llm="tiny", users=3, seeds=1, out=tmp_path / method),
                 tool_loader=rule_loader, llm_factory=scripted_factory(holder))
        sent[method] = [c.messages for c in holder["backend"].calls]
        assert all(len(c.constraint.options) == 30 for c in holder["backend"].calls)  # SASRec's 30
    chat = [m[-1]["content"] for m in sent["chatrec"]]
    single = [m[-1]["content"] for m in sent["single"]]
    assert all("A recommender suggested these candidates" in p and "years old" in p for p in chat)
    assert all("A recommender suggested" not in p and "Please rank the candidate" in p for p in single)
    assert {m[0]["content"] for m in sent["chatrec"]} != {m[0]["content"] for m in sent["single"]}
