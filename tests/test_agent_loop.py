"""The agent loop driven by scripted turns on ML-100K with a real (co-occurrence) retrieval
tool: every branch (retrieval, rank, the final step and its last-list ablation, the cap,
invalid actions, memory re-runs and repairs, clamping, plan, llm_rank)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from test_agent_support import ConstraintIgnoringBackend, CooccurrenceRetrieval

from toolrec_local.agent.actions import Retrieval
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.baselines import llm_rank
from toolrec_local.agent.loop import run_agent, run_plan
from toolrec_local.agent.memory import ToolList, interleave
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import ActionGrammar, ItemListGrammar

USER = 0


@pytest.fixture(scope="module")
def tool(ml100k):
    return CooccurrenceRetrieval(ml100k)


def run(ml100k, tool, turns, check=True, **config):
    backend = ScriptedBackend(turns) if check else ConstraintIgnoringBackend(turns)
    ctx = AgentContext(ml100k, tool, backend, AgentConfig(**config))
    return asyncio.run(run_agent(ctx, USER)), backend, ctx


def first_k(messages, constraint):
    """A Rank answer: the first k options, as a grammar-constrained model may write it."""
    return "\n".join(constraint.options[: constraint.k])


def last_k(messages, constraint):
    return "\n".join(constraint.options[-constraint.k:])


def assert_valid_final(traj, ds, n=10):
    history = set(traj.history_items)
    assert len(traj.final_items) == n == len(set(traj.final_items))
    assert all(1 <= i <= ds.n_items and i not in history for i in traj.final_items)


def options_of(ds, items):
    return tuple(f"{ds.item_ids[i]}, {ds.item_names[i]}" for i in items)


def test_retrieval_rank_finish(ml100k, tool):
    turns = ["Thought: genre first.\nAction: Retrieval[genre, 20]",
             "Thought: and the plain recommender.\nAction: Retrieval[None, 15]",
             "Thought: rank by director.\nAction: Rank[director, 10]", last_k,
             "Thought: good.\nAction: Finish", first_k]
    traj, backend, ctx = run(ml100k, tool, turns)
    assert [r.action for r in traj.rounds] == ["Retrieval[genre, 20]", "Retrieval[None, 15]", "Rank[director, 10]", "Finish"]
    assert traj.finished_by == "finish" and backend.remaining == 0
    assert_valid_final(traj, ml100k)
    # Rank's grammar offers exactly the gathered candidates, taken from the lists in turn
    rank_constraint = backend.calls[3].constraint
    gathered = interleave([traj.rounds[0].items, traj.rounds[1].items])
    assert set(gathered) == set(traj.rounds[0].items) | set(traj.rounds[1].items)
    assert isinstance(rank_constraint, ItemListGrammar) and rank_constraint.k == 10
    assert rank_constraint.options == options_of(ml100k, gathered)
    assert traj.rounds[2].items == gathered[-10:]
    # every action call carries the action grammar with the tool's attributes
    assert all(backend.calls[i].constraint == ActionGrammar(("genre", "release_year"), 50) for i in (0, 1, 2, 4))
    # earlier observations appear in later prompts with their tool marks' content
    last_prompt = backend.calls[4].messages
    assert "Action: Rank[director, 10]" in last_prompt[-2]["content"]
    assert ml100k.item_names[traj.rounds[2].items[0]] in last_prompt[-1]["content"]
    # the final step: the LLM's answer over every candidate is the final list
    final_options = interleave([r.items for r in traj.rounds[:3]])
    assert backend.calls[5].constraint.options == options_of(ml100k, final_options)
    assert traj.final_items == final_options[:10] == traj.final_step.items
    assert traj.last_list_items == traj.rounds[2].items  # what the last-list ablation answers
    totals = traj.totals()
    assert totals["llm_calls"] == 6 and traj.totals(with_finish=False)["llm_calls"] == 5
    assert totals["grammar_violations"] == totals["invalid_items"] == totals["retries"] == totals["repairs"] == 0
    assert traj.tools_used() == {"Retrieval", "Rank", "Finish"}


def test_finish_sends_one_request_with_every_gathered_list_and_returns_the_llms_list(ml100k, tool):
    """The authors' conclude_step: one LLM call whose prompt shows every list (retrievals and
    the earlier rank) under its tool mark with its scores; the answer is exactly its list."""
    ds = ml100k
    chosen = {}

    def finish_answer(messages, constraint):  # ten candidates from the back, in a scrambled order
        picks = list(constraint.options[-15:])[::-1][:10]
        chosen["items"] = [ds.item_index[o.split(",")[0]] for o in picks]
        return "\n".join(picks)

    turns = ["Thought: a.\nAction: Retrieval[None, 20]", "Thought: b.\nAction: Retrieval[genre, 20]",
             "Thought: c.\nAction: Rank[director, 10]", first_k, "Thought: d.\nAction: Finish", finish_answer]
    traj, backend, _ = run(ds, tool, turns)
    assert len(backend.calls) == 6 and backend.remaining == 0  # one request after the Finish turn
    final_call = backend.calls[-1]
    assert isinstance(final_call.constraint, ItemListGrammar) and final_call.constraint.k == 10
    prompt = final_call.messages[-1]["content"]
    lists = [(traj.rounds[0], "Retrieval[None, 20]"), (traj.rounds[1], "Retrieval[genre, 20]"),
             (traj.rounds[2], "Rank[director, 10]")]
    for rnd, mark in lists:
        assert f"{mark}:" in prompt
        for i in rnd.items:  # each item under its list, with its score
            assert f"\n{ds.item_ids[i]}, {ds.item_names[i]}, " in prompt
    retrieval = dict(tool.retrieve(USER, "genre", 20))
    i = traj.rounds[1].items[0]
    assert f"{ds.item_ids[i]}, {ds.item_names[i]}, {retrieval[i]:.3f}" in prompt
    assert prompt.index("Retrieval[None, 20]:") < prompt.index("Retrieval[genre, 20]:") < prompt.index("Rank[director, 10]:")
    assert prompt.rstrip().endswith("output the top 10.") and "final recommendation" in prompt
    assert 'one candidate movie per line as "id, name"' in final_call.messages[0]["content"]
    everything = set(traj.rounds[0].items) | set(traj.rounds[1].items)
    assert set(options_of(ds, everything)) == set(final_call.constraint.options)
    assert traj.final_items == chosen["items"] and len(traj.final_items) == 10
    assert traj.final_step.usage.calls == 1 and traj.final_step.action == "Finish"
    assert "the LLM's top 10 of the" in traj.final_note
    d = traj.to_dict()
    assert d["finish"]["observation"] == [ds.item_ids[i] for i in chosen["items"]] and d["finish"]["llm_calls"] == 1
    assert d["last_list"]["final"] == [ds.item_ids[i] for i in traj.rounds[2].items]
    assert d["last_list"]["totals"]["llm_calls"] == d["totals"]["llm_calls"] - 1


def test_last_list_ablation_makes_no_final_call_and_returns_the_last_list(ml100k, tool):
    turns = ["Thought: a.\nAction: Retrieval[None, 20]", "Thought: b.\nAction: Retrieval[genre, 20]",
             "Thought: c.\nAction: Finish"]
    traj, backend, ctx = run(ml100k, tool, turns, finish="last-list")
    assert len(backend.calls) == 3 and traj.finish_mode == "last-list"
    assert traj.final_items == traj.rounds[1].items[:10] == traj.last_list_items
    assert "cut Retrieval[genre, 20] to 10" in traj.final_note
    assert traj.final_step.usage.calls == 0 and traj.totals()["llm_calls"] == traj.totals(with_finish=False)["llm_calls"] == 3
    assert "the latest list becomes the top 10" in ctx.renderer.system
    assert "ranked once more into the final top 10" in AgentContext(ml100k, tool, None, AgentConfig()).renderer.system


def test_cap_forces_the_final_step(ml100k, tool):
    turns = ["Thought: more.\nAction: Retrieval[genre, 30]", "Thought: more.\nAction: Retrieval[None, 30]", last_k]
    traj, backend, _ = run(ml100k, tool, turns, max_rounds=2)
    assert traj.finished_by == "cap" and len(traj.rounds) == 2 and backend.remaining == 0
    assert isinstance(backend.calls[-1].constraint, ItemListGrammar) and backend.calls[-1].constraint.k == 10
    assert traj.final_items == interleave([traj.rounds[0].items, traj.rounds[1].items])[-10:]
    assert_valid_final(traj, ml100k)


def test_finish_with_too_few_candidates_adds_a_marked_backbone_list(ml100k, tool):
    """The backbone items added for the final step are marked as a top-up, never as an agent
    call (Retrieval[None, 6]) that was not made, and the top-up is counted."""
    turns = ["Thought: a.\nAction: Retrieval[genre, 4]", "Thought: done.\nAction: Finish", last_k]
    traj, backend, _ = run(ml100k, tool, turns)
    prompt = backend.calls[-1].messages[-1]["content"]
    assert "Retrieval[genre, 4]:" in prompt and "Top-up from the backbone, 6 items:" in prompt
    assert "Retrieval[None" not in prompt
    assert len(backend.calls[-1].constraint.options) == 10
    assert set(traj.rounds[0].items) <= set(traj.final_items)
    assert '4 gathered: shown with "Top-up from the backbone, 6 items", the backbone\'s next 6' in traj.final_note
    assert traj.totals()["fallbacks"]["topup"] == 1 and traj.final_step.fallbacks == {"topup": 1}
    assert traj.to_dict()["finish"]["fallbacks"] == {"topup": 1}
    assert_valid_final(traj, ml100k)


def test_finish_before_any_list_ranks_the_backbones_top_n(ml100k, tool):
    traj, backend, _ = run(ml100k, tool, ["Thought: done.\nAction: Finish", last_k])
    assert_valid_final(traj, ml100k)
    backbone = [i for i, _ in tool.retrieve(USER, None, 10)]
    assert set(traj.final_items) == set(backbone) and "nothing gathered" in traj.final_note
    assert "Top-up from the backbone, 10 items:" in backend.calls[-1].messages[-1]["content"]
    assert traj.totals()["fallbacks"]["topup"] == 1


def test_cap_finishes_with_the_latest_list(ml100k, tool):
    turns = ["Thought: more.\nAction: Retrieval[genre, 30]"] * 3
    traj, backend, _ = run(ml100k, tool, turns, max_rounds=3, finish="last-list")
    assert traj.finished_by == "cap" and len(traj.rounds) == 3 and backend.remaining == 0
    assert traj.final_items == traj.rounds[-1].items[:10]
    assert "cut Retrieval[genre, 30] to 10" in traj.final_note
    assert_valid_final(traj, ml100k)


def test_finish_before_any_list_falls_back_to_the_backbone(ml100k, tool):
    traj, _, _ = run(ml100k, tool, ["Thought: done.\nAction: Finish"], finish="last-list")
    assert_valid_final(traj, ml100k)
    assert [i for i, _ in tool.retrieve(USER, None, 10)] == traj.final_items
    assert "no list gathered" in traj.final_note and "padded 10 from the backbone" in traj.final_note


def test_short_list_is_padded_from_gathered_candidates_by_score(ml100k, tool):
    turns = ["Thought: a.\nAction: Retrieval[genre, 12]", "Thought: b.\nAction: Rank[None, 3]", first_k,
             "Thought: c.\nAction: Finish"]
    traj, _, _ = run(ml100k, tool, turns, finish="last-list")
    ranked = traj.rounds[1].items
    assert traj.final_items[:3] == ranked
    retrieved = dict(tool.retrieve(USER, "genre", 12))
    pad = traj.final_items[3:]
    assert set(pad) <= set(retrieved) and [retrieved[i] for i in pad] == sorted((retrieved[i] for i in pad), reverse=True)
    assert_valid_final(traj, ml100k)


def test_rank_with_nothing_gathered_is_observed_as_invalid(ml100k, tool):
    turns = ["Thought: rank.\nAction: Rank[genre, 5]", "Thought: ok.\nAction: Retrieval[None, 10]",
             "Thought: done.\nAction: Finish", first_k]
    traj, backend, _ = run(ml100k, tool, turns)
    assert traj.rounds[0].note.startswith("Invalid action: Rank needs gathered movies")
    assert backend.calls[1].messages[-1]["content"].startswith("Observation: Invalid action:")
    assert_valid_final(traj, ml100k)


def test_free_text_invalid_action_and_tolerant_reading(ml100k, tool):
    turns = ["I think we should search.", "Thought 2: genre\nAction 2: retrieval[GENRE,25] then rank",
             "thought: fine\naction: finish", numbered_chatter]
    traj, backend, _ = run(ml100k, tool, turns, grammar=False)
    assert all(c.constraint is None for c in backend.calls)  # free text: no constraint is sent
    assert traj.rounds[0].note.startswith("Invalid action: no Retrieval")
    assert backend.calls[1].messages[-1]["content"].startswith("Observation: Invalid action:")
    assert traj.rounds[1].action == "Retrieval[genre, 25]" and len(traj.rounds[1].items) == 25
    assert traj.totals()["grammar_violations"] == 0  # only counted in grammar mode
    assert traj.final_step.invalid_items == 0 and traj.final_step.repairs == 0  # the numbered answer was read
    assert_valid_final(traj, ml100k)


def test_free_text_k_out_of_range_is_clamped_and_said(ml100k, tool):
    traj, backend, _ = run(ml100k, tool, ["Thought: x\nAction: Retrieval[genre, 500]", "Action: Finish"], grammar=False, max_k=40,
                           finish="last-list")
    # the round records what the model asked for; the tool ran the nearest valid K and said so
    assert traj.rounds[0].action == "Retrieval[genre, 500]" and len(traj.rounds[0].items) == 40
    assert "K=500 clamped to 40" in traj.rounds[0].note
    assert "K=500 clamped to 40" in backend.calls[1].messages[-1]["content"]


def test_rank_rerun_names_the_wrong_items(ml100k, tool):
    ds = ml100k
    hist_item = int(ds.split(USER, "test")[0][-1])

    def bad_then_good(messages, constraint):
        return f"{ds.item_ids[hist_item]}, {ds.item_names[hist_item]}\n99999, Unknown Movie\n" + first_k(messages, constraint)

    turns = ["Thought: a\nAction: Retrieval[None, 10]", "Thought: b\nAction: Rank[genre, 5]",
             lambda m, c: bad_then_good(m, _Options(m, 5)), first_k_text(5), "Action: Finish"]
    traj, backend, _ = run(ml100k, tool, turns, grammar=False, finish="last-list")
    rnd = traj.rounds[1]
    assert rnd.retries == 1 and rnd.repairs == 0 and rnd.invalid_items >= 2
    retry_prompt = backend.calls[3].messages[-1]["content"]
    assert "Your previous answer was wrong" in retry_prompt
    assert f"'{ds.item_ids[hist_item]}, {ds.item_names[hist_item]}' is in the user's history" in retry_prompt
    assert "'99999, Unknown Movie' is not in the catalogue" in retry_prompt
    assert len(rnd.items) == 5 and hist_item not in rnd.items
    assert_valid_final(traj, ml100k)


def test_rank_repair_after_retries_are_spent(ml100k, tool):
    garbage = "1. Nothing Real\n2. Another Unknown"
    turns = ["Thought: a\nAction: Retrieval[genre, 10]", "Thought: b\nAction: Rank[None, 6]"] + [garbage] * 3 + ["Action: Finish"]
    traj, _, _ = run(ml100k, tool, turns, grammar=False, max_retries=2, finish="last-list")
    rnd = traj.rounds[1]
    assert rnd.retries == 2 and rnd.repairs == 1
    assert rnd.items == [i for i, _ in tool.retrieve(USER, "genre", 10)][:6]  # filled by score
    assert "repaired" in rnd.note
    assert_valid_final(traj, ml100k)


class FaultyRetrieval:
    """Wraps the real tool but slips the user's last history item and an unknown id into the
    first call's answer, to exercise memory's check on the Retrieval tool."""

    def __init__(self, tool, ds):
        self.tool, self.ds, self.calls = tool, ds, []
        self.attributes = tool.attributes

    def retrieve(self, user, attribute, k, exclude=(), part="test"):
        self.calls.append(tuple(exclude))
        pairs = self.tool.retrieve(user, attribute, k, exclude, part)
        bad = [(int(self.ds.split(user, part)[0][-1]), 9.0), (self.ds.n_items + 5, 8.0)]
        return [p for p in bad if p[0] not in exclude] + pairs[: k - 2] if len(self.calls) == 1 else pairs


def test_retrieval_output_is_checked_and_rerun(ml100k, tool):
    faulty = FaultyRetrieval(tool, ml100k)
    traj, _, _ = run(ml100k, faulty, ["Thought: a\nAction: Retrieval[None, 10]", "Action: Finish"], grammar=False,
                     finish="last-list")
    rnd = traj.rounds[0]
    assert rnd.invalid_items == 2 and rnd.retries == 1 and rnd.repairs == 0
    assert set(faulty.calls[1]) == {int(ml100k.split(USER, "test")[0][-1])}  # the unknown id cannot be excluded
    assert len(rnd.items) == 10
    assert_valid_final(traj, ml100k)


def test_grammar_violation_is_counted_and_the_run_goes_on(ml100k, tool):
    traj, _, _ = run(ml100k, tool, ["Thought: x\nAction: retrieval[genre, 5]", "Thought: y\nAction: Finish"], check=False,
                     finish="last-list")
    assert traj.rounds[0].grammar_violations == 1 and traj.rounds[1].grammar_violations == 0
    assert traj.rounds[0].action == "Retrieval[genre, 5]"


def test_observation_window_shortens_old_observations(ml100k, tool):
    turns = ["Thought: a\nAction: Retrieval[genre, 10]", "Thought: b\nAction: Retrieval[None, 10]", "Action: Finish"]
    _, backend, _ = run(ml100k, tool, turns, check=False, observation_window=1, finish="last-list")
    prompt = backend.calls[2].messages
    assert prompt[3]["content"] == "Observation: 10 movies from Retrieval[genre, 10] (listed earlier)."
    assert prompt[5]["content"].startswith("Observation: The recommender returned 10 movies:")


def test_trajectory_json(ml100k, tool):
    turns = ["Thought: a\nAction: Retrieval[genre, 12]", "Thought: b\nAction: Finish", last_k]
    traj, _, _ = run(ml100k, tool, turns)
    d = json.loads(json.dumps(traj.to_dict()))
    assert d["finish"]["action"] == "Finish" and d["finish"]["observation"] == d["final"] and d["finish_mode"] == "llm"
    v = json.loads(json.dumps(traj.to_dict(variant="last-list")))
    assert v["final"] == d["last_list"]["final"] and v["finish_mode"] == "last-list" and "finish" not in v
    history, target = ml100k.split(USER, "test")
    assert d["user"] == ml100k.user_ids[USER] and d["target"] == ml100k.item_ids[target]
    assert d["history"] == [ml100k.item_ids[i] for i in history]
    assert d["final"] == [ml100k.item_ids[i] for i in traj.final_items]
    assert set(d["rounds"][0]) >= {"thought", "action", "observation", "tokens_in", "tokens_out", "latency_s", "retries", "repairs"}
    assert d["rounds"][0]["observation"] == [ml100k.item_ids[i] for i in traj.rounds[0].items]
    assert d["rounds"][0]["tokens_in"] > 0


def test_llm_rank_drops_history_and_ranks_under_the_grammar(ml100k, tool):
    history, _ = ml100k.split(USER, "test")
    pairs = [(int(history[-1]), 9.0)] + tool.retrieve(USER, None, 30)
    lists = [ToolList(Retrieval(None, 31), [i for i, _ in pairs], [s for _, s in pairs])]
    backend = ScriptedBackend([last_k])
    ctx = AgentContext(ml100k, tool, backend, AgentConfig())
    items, rnd = asyncio.run(llm_rank(ctx, USER, lists, 10, attribute="genre", include_profile=False))
    stats = rnd.stats()
    assert items == lists[0].items[1:][-10:]
    messages, constraint = backend.calls[0].messages, backend.calls[0].constraint
    assert len(constraint.options) == 30 and constraint.k == 10
    assert "years old" not in messages[1]["content"] and "according to their genre" in messages[1]["content"]
    assert f"{pairs[1][1]:.3f}" in messages[1]["content"]  # the recommender's scores are shown
    assert stats["llm_calls"] == 1 and stats["grammar_violations"] == 0 and stats["repairs"] == 0


def test_run_plan_writes_then_executes(ml100k, tool):
    turns = ["Thought: a\nAction: Retrieval[genre, 15]", "Thought: b\nAction: Rank[None, 10]",
             "Thought: c\nAction: Finish", first_k, last_k]
    backend = ScriptedBackend(turns)
    ctx = AgentContext(ml100k, tool, backend, AgentConfig())
    traj = asyncio.run(run_plan(ctx, USER))
    planning = [backend.calls[i].messages for i in range(3)]
    assert all("(not available while planning)" in m[-1]["content"] for m in planning[1:])
    assert not any("returned 15 movies" in msg["content"] for m in planning for msg in m)
    assert isinstance(backend.calls[3].constraint, ItemListGrammar)  # Rank runs after the plan
    assert "final recommendation" in backend.calls[4].messages[-1]["content"]  # then the final step
    assert traj.finished_by == "plan"
    assert traj.final_items == interleave([traj.rounds[0].items, traj.rounds[1].items])[-10:]
    assert traj.last_list_items == traj.rounds[1].items
    assert_valid_final(traj, ml100k)


def test_plan_in_free_text_survives_a_reply_that_does_not_parse(ml100k, tool):
    """--no-grammar plan: an unreadable planned step is observed as invalid, not a crash."""
    turns = ["I would look at the user's favourite genres first.", "Thought: b\nAction: Retrieval[genre, 12]",
             "Thought: c\nAction: Finish", lambda m, c: "\n".join(_Options(m, 10).options[:10])]
    backend = ScriptedBackend(turns)
    ctx = AgentContext(ml100k, tool, backend, AgentConfig(grammar=False))
    traj = asyncio.run(run_plan(ctx, USER))
    assert traj.rounds[0].action == "I would look at the user's favourite genres first."
    assert traj.rounds[0].note.startswith("Invalid action: no Retrieval")
    assert backend.calls[1].messages[2]["content"] == "I would look at the user's favourite genres first."
    assert traj.rounds[1].action == "Retrieval[genre, 12]" and len(traj.rounds[1].items) == 12
    assert_valid_final(traj, ml100k)


# helpers for the free-text rank scripts: options as the grammar would list them
class _Options:
    """The candidates of a Rank or final-step prompt ("id, name, score" lines under the
    lists' marks), as "id, name" options in the order first listed."""

    def __init__(self, messages, k):
        lines = messages[-1]["content"].splitlines()
        found = [line.rsplit(", ", 1)[0] for line in lines if re.fullmatch(r"\d+, .+, -?\d+\.\d{3}", line)]
        self.options = tuple(dict.fromkeys(found))
        self.k = k


def first_k_text(k):
    return lambda messages, constraint: "\n".join(_Options(messages, k).options[:k])


def numbered_chatter(messages, constraint):
    """A free-text final answer as chat models write it: a preamble, then numbered lines."""
    options = _Options(messages, 10).options[:10]
    return "Sure! Here are the top 10:\n" + "\n".join(f"{n}. {o}" for n, o in enumerate(options, 1))


FITTED_TURNS = ["Thought: a\nAction: Retrieval[genre, 30]", "Thought: b\nAction: Retrieval[None, 30]",
                "Thought: c\nAction: Retrieval[release_year, 30]", "Thought: d\nAction: Rank[None, 10]", first_k,
                "Thought: e\nAction: Finish"]


def assert_fitted(ctx, calls, limit):
    for call in calls:
        kind = "list" if isinstance(call.constraint, ItemListGrammar) else "action"
        assert ctx.estimate_tokens(call.messages, kind) + call.max_tokens <= limit


def assert_cut_in_turn(ds, constraint, lists):
    options = constraint.options
    assert 10 <= len(options) < len(interleave(lists))
    assert options == options_of(ds, interleave(lists, len(options)))
    assert all(set(options) & set(options_of(ds, items)) for items in lists)  # every list contributes


def test_prompts_are_fitted_into_the_context(ml100k, tool):
    limit = 1400
    traj, backend, ctx = run(ml100k, tool, FITTED_TURNS, context_tokens=limit, history_len=5, finish="last-list")
    assert_fitted(ctx, backend.calls, limit)
    # the unfitted prompt would not have fitted: demos were dropped, old observations shortened
    last = backend.calls[-1].messages
    assert "Example" not in last[0]["content"]
    assert any(m["content"].endswith("(listed earlier).") for m in last)
    # Rank cut the candidates taking from each list in turn, at least k
    assert_cut_in_turn(ml100k, backend.calls[4].constraint, [r.items for r in traj.rounds[:3]])
    assert "candidates shown (taken from each list in turn)" in traj.rounds[3].note
    assert_valid_final(traj, ml100k)


def test_the_final_step_is_fitted_or_skipped(ml100k, tool):
    limit = 1600  # the final step fits with its candidates cut in turn
    traj, backend, ctx = run(ml100k, tool, FITTED_TURNS + [first_k], context_tokens=limit, history_len=5)
    assert_fitted(ctx, backend.calls, limit)
    assert_cut_in_turn(ml100k, backend.calls[-1].constraint, [r.items for r in traj.rounds[:4]])
    assert traj.final_step.usage.calls == 1 and traj.final_items == traj.final_step.items
    limit = 1080  # not even 10 candidates fit: the last-list answer, said
    traj, backend, _ = run(ml100k, tool, FITTED_TURNS, context_tokens=limit, history_len=5)
    assert len(backend.calls) == 6 and traj.final_items == traj.last_list_items == traj.rounds[3].items
    assert "final ranking skipped: its prompt does not fit the context" in traj.final_note
    assert_valid_final(traj, ml100k)


def test_repeated_lists_are_shown_once_when_the_context_is_short(ml100k, tool):
    """Six identical retrievals (as a weak model writes them): shown under every mark they
    do not fit 1500 tokens even as 10 candidates, so each item is shown once instead."""
    turns = ["Thought: a\nAction: Retrieval[None, 10]"] * 6 + [first_k]
    traj, backend, ctx = run(ml100k, tool, turns, context_tokens=1500, max_rounds=6, demos=0, repeated_lists="full")
    prompt = backend.calls[-1].messages[-1]["content"]
    assert traj.final_step.usage.calls == 1 and prompt.count("Retrieval[None, 10]:") == 1
    assert all(prompt.count(f"\n{o}, ") == 1 for o in backend.calls[-1].constraint.options)
    assert "each candidate shown once" in traj.final_note
    _, unlimited, _ = run(ml100k, tool, turns, context_tokens=0, max_rounds=6, demos=0, repeated_lists="full")
    assert unlimited.calls[-1].messages[-1]["content"].count("Retrieval[None, 10]:") == 6  # without a limit: every list


@pytest.mark.parametrize("mode", ["refer", "full"])
def test_a_repeated_list_is_named_instead_of_listed_again(ml100k, tool, mode):
    """A call that returns exactly an earlier list (a weak model repeats its actions): by
    default ("refer") its observation and its place in the final prompt name the earlier list;
    "full" lists it again, as the authors' code does. The candidates are the same either way."""
    ds = ml100k
    turns = ["Thought: a\nAction: Retrieval[None, 10]", "Thought: b\nAction: Retrieval[genre, 10]",
             "Thought: c\nAction: Retrieval[None, 10]", "Thought: d\nAction: Finish", first_k]
    traj, backend, _ = run(ds, tool, turns, repeated_lists=mode)
    assert traj.rounds[2].items == traj.rounds[0].items  # the tool returned the same list
    seen = backend.calls[3].messages[-1]["content"]  # the observation of round 3, as round 4 sees it
    final = backend.calls[-1]
    prompt = final.messages[-1]["content"]
    only_first = [i for i in traj.rounds[0].items if i not in traj.rounds[1].items]
    assert only_first
    line = f"\n{ds.item_ids[only_first[0]]}, {ds.item_names[only_first[0]]}, "
    if mode == "refer":
        assert seen == "Observation: the same 10 movies as Retrieval[None, 10] returned before; nothing new."
        assert "Retrieval[None, 10]: the same movies as Retrieval[None, 10] above." in prompt
        assert prompt.count(line) == 1
    else:
        assert seen.startswith("Observation: The recommender returned 10 movies:") and seen.count("\n") == 10
        assert prompt.count(line) == 2 and "the same movies as" not in prompt
    assert set(final.constraint.options) == set(options_of(ds, set(traj.rounds[0].items) | set(traj.rounds[1].items)))


def test_without_a_context_limit_nothing_is_cut(ml100k, tool):
    turns = ["Thought: a\nAction: Retrieval[genre, 30]", "Thought: b\nAction: Retrieval[None, 30]", "Thought: c\nAction: Finish",
             first_k]
    _, backend, _ = run(ml100k, tool, turns)
    last = backend.calls[2].messages
    assert "Example 2:" in last[0]["content"]
    assert not any(m["content"].endswith("(listed earlier).") for m in last)
    assert len(backend.calls[3].constraint.options) == len(interleave(
        [[i for i, _ in tool.retrieve(USER, "genre", 30)], [i for i, _ in tool.retrieve(USER, None, 30)]]))


def test_a_run_whose_prompt_cannot_fit_ends_with_the_backbone(ml100k, tool):
    # 300 tokens cannot hold even the instructions: no LLM call, the backbone's top N
    traj, backend, _ = run(ml100k, tool, [], context_tokens=300)
    assert traj.rounds == [] and traj.finished_by == "context" and len(backend.calls) == 0
    assert traj.final_items == [i for i, _ in tool.retrieve(USER, None, 10)]


def test_usage_counts_every_request_of_a_stepwise_answer():
    from toolrec_local.agent.trajectory import Usage
    from toolrec_local.llm.protocol import Completion

    u = Usage()
    u.add(Completion("x", tokens_in=100, tokens_out=5, latency_s=0.5, calls=11))
    u.add(Completion("y", tokens_in=10, tokens_out=1, latency_s=0.25))
    assert (u.calls, u.tokens_in, u.tokens_out, u.latency_s) == (12, 110, 6, 0.75)


def test_view_shows_rounds_names_and_the_target(ml100k, tool):
    from rich.console import Console

    from toolrec_local.agent.view import show

    _, target = ml100k.split(USER, "test")

    class WithTarget:  # the real tool, plus the held-out item in the first list
        attributes = tool.attributes

        def retrieve(self, user, attribute, k, exclude=(), part="test"):
            return [(target, 9.0)] + tool.retrieve(user, attribute, k - 1, exclude, part)

    def target_second(messages, constraint):
        mine = f"{ml100k.item_ids[target]}, {ml100k.item_names[target]}"
        others = [o for o in constraint.options if o != mine]
        return "\n".join([others[0], mine] + others[1: constraint.k - 1])

    turns = ["Thought: genre.\nAction: Retrieval[genre, 20]", "Thought: rank.\nAction: Rank[None, 10]", target_second,
             "Thought: done.\nAction: Finish", target_second]
    traj, _, _ = run(ml100k, WithTarget(), turns)
    assert traj.final_items[1] == target
    console = Console(record=True, width=140)
    show(console, ml100k, traj)
    text = console.export_text()
    assert "Round 1" in text and "Round 3" in text and "Retrieval[genre, 20]" in text
    assert ml100k.item_names[traj.final_items[0]] in text and "Top 10" in text
    assert "target at #2" in text
    assert "Final step: the LLM ranks every gathered list" in text and "the LLM's top 10 of the 20 candidates" in text


@pytest.mark.parametrize("served, config, expected", [
    (2048, {}, 2048),  # what the backend says it serves
    (2048, {"context_tokens": 1000}, 1000),  # said explicitly
    (2048, {"context_tokens": 0}, None),  # no limit
    (None, {}, None),  # a backend that does not say
])
def test_context_is_the_backends_unless_given(ml100k, tool, served, config, expected):
    ctx = AgentContext(ml100k, tool, ScriptedBackend([], context=served), AgentConfig(**config))
    assert ctx.context_tokens == expected


@pytest.mark.parametrize("card, backend, expected", [
    ("tiny-random", "vllm", 2048),  # the card's --max-model-len
    ("tiny-random", "local", 4096),  # its context_length
    ("smollm2-135m", "local", 8192),
])
def test_the_card_says_what_context_a_backend_serves(card, backend, expected):
    from toolrec_local.llm.registry import load_card

    assert load_card(card).context_for(backend) == expected


def test_interleave_takes_from_each_list_in_turn():
    assert interleave([[1, 2, 3, 4], [3, 5], [6]]) == [1, 3, 6, 2, 5, 4]
    assert interleave([[1, 2, 3, 4], [3, 5], [6]], cap=4) == [1, 3, 6, 2]
    assert interleave([[1, 1, 2], []], cap=10) == [1, 2] and interleave([]) == []


class TwoLists:
    """Retrieval[None] returns items A (50), Retrieval[genre] returns B (50): 20 shared."""

    def __init__(self, ds, user):
        history = set(int(i) for i in ds.split(user, "test")[0])
        pool = [i for i in range(1, ds.n_items + 1) if i not in history][:80]
        self.lists = {None: pool[:50], "genre": pool[30:80]}
        self.attributes = ["genre", "release_year"]

    def retrieve(self, user, attribute, k, exclude=(), part="test"):
        return [(i, 1.0 - n / 100) for n, i in enumerate(self.lists[attribute]) if i not in set(exclude)][:k]


@pytest.mark.parametrize("cap", [50, None])
def test_every_stored_list_reaches_a_capped_rank(ml100k, cap):
    """Two 50-item lists overlapping by 20: Rank used to see the first 50 in memory order, the
    whole first list and none of the second's 30 new items. Taken in turn, both lists fill
    the candidates (and without a cap Rank sees all 80)."""
    tool = TwoLists(ml100k, USER)
    a, b = tool.lists[None], tool.lists["genre"]
    turns = ["Thought: a.\nAction: Retrieval[None, 50]", "Thought: b.\nAction: Retrieval[genre, 50]",
             "Thought: c.\nAction: Rank[None, 10]", first_k, "Thought: d.\nAction: Finish", first_k]
    traj, backend, _ = run(ml100k, tool, turns, rank_max_candidates=cap)
    rank = backend.calls[2 + 1].constraint
    seen = [ml100k.item_index[o.split(",")[0]] for o in rank.options]
    if cap is None:
        assert set(seen) == set(a) | set(b) and len(seen) == 80
    else:
        assert len(seen) == 50 and seen == interleave([a, b], 50)
        assert set(seen) == set(a[:25]) | set(b[:25])  # each list's top half, B's best new items among them
        assert set(seen) & (set(b) - set(a)) and set(seen) != set(a)
    prompt = backend.calls[3].messages[-1]["content"]
    assert "Retrieval[None, 50]:" in prompt and "Retrieval[genre, 50]:" in prompt
    final = backend.calls[5].constraint  # the final step merges the same way, the Rank list included
    assert len(final.options) == (50 if cap else 80)


@pytest.mark.parametrize("bad", [{"finish": "first-list"}, {"temperature": -1.0}, {"rank_max_candidates": 0}])
def test_agent_settings_out_of_range_are_user_errors(bad):
    from toolrec_local.errors import ToolrecError

    with pytest.raises(ToolrecError, match=next(iter(bad))):
        AgentConfig(**bad)


# ---- what the agent sees: whole lists, and ranked lists in the LLM's order ----------------------
def test_an_observation_holds_the_whole_list_by_default_and_n_with_show_items(ml100k, tool):
    turns = ["Thought: a\nAction: Retrieval[genre, 20]", "Thought: b\nAction: Finish", first_k]
    traj, backend, _ = run(ml100k, tool, turns)
    seen = backend.calls[1].messages[-1]["content"]
    lines = seen.splitlines()[1:]
    assert seen.startswith("Observation: The recommender focused on genre returned 20 movies:")
    assert len(lines) == 20 and "more." not in seen
    assert lines == [f"{ml100k.item_ids[i]}, {ml100k.item_names[i]}, {s:.3f}" for i, s in tool.retrieve(USER, "genre", 20)]
    _, cut, _ = run(ml100k, tool, turns, observe_items=5)
    assert cut.calls[1].messages[-1]["content"].splitlines()[1:] == lines[:5] + ["... and 15 more."]


def test_a_rank_list_is_shown_in_the_llms_order_with_positions_and_no_scores(ml100k, tool):
    """The authors' final step sees a ranked list as the LLM wrote it: here its order and
    positions. The backbone's scores stay on the retrieval lists and never label a ranked one."""
    ds = ml100k
    chosen = []

    def scrambled(messages, constraint):  # five candidates, in an order no score gives
        chosen[:] = [constraint.options[n] for n in (7, 2, 11, 0, 5)]
        return "\n".join(chosen)

    turns = ["Thought: a\nAction: Retrieval[genre, 12]", "Thought: b\nAction: Rank[director, 5]", scrambled,
             "Thought: c\nAction: Rank[None, 3]", first_k, "Thought: d\nAction: Finish", first_k]
    traj, backend, _ = run(ds, tool, turns)
    assert traj.rounds[1].items == [ds.item_index[o.split(",")[0]] for o in chosen]
    ranked = [f"{n}. {o}" for n, o in enumerate(chosen, 1)]
    assert backend.calls[3].messages[-1]["content"] == \
        "Observation: The top 5 movies ranked by director, best first:\n" + "\n".join(ranked)
    block = 'Rank[director, 5]: the top 5 movies ranked by director, best first, as "position. id, name":\n' + \
        "\n".join(ranked) + "\n"
    score = dict(tool.retrieve(USER, "genre", 12))
    for call in (backend.calls[4], backend.calls[-1]):  # the next Rank, and the final step
        prompt = call.messages[-1]["content"]
        assert block in prompt and "recommender score" in prompt.split("Rank[director, 5]:")[0]
        for o in chosen:  # its items carry their scores only under the retrieval list
            i = ds.item_index[o.split(",")[0]]
            assert prompt.count(f"{o}, {score[i]:.3f}") == 1
    assert traj.final_items == traj.final_step.items


def test_a_cut_ranked_list_keeps_its_positions():
    from toolrec_local.agent.actions import Rank

    lst = ToolList(Rank("genre", 4), [5, 6, 7, 8])
    assert lst.ranked and lst.ranks == [1, 2, 3, 4] and lst.scores is None
    part = lst.only({5, 7, 8})
    assert (part.items, part.ranks, part.mark) == ([5, 7, 8], [1, 3, 4], "Rank[genre, 4]")
    assert not ToolList(Retrieval(None, 2), [1, 2], [0.5, 0.4]).ranked


def test_the_default_cap_is_the_authors_seven_rounds_then_the_forced_final_step(ml100k, tool):
    """chat_RecAct.py: `for i in range(1, 8)` agent rounds, then finish[] if not done; the
    forced final step is not a round."""
    turns = ["Thought: more.\nAction: Retrieval[genre, 5]"] * 7 + [last_k]
    traj, backend, ctx = run(ml100k, tool, turns)
    assert ctx.config.max_rounds == 7 and traj.finished_by == "cap" and len(traj.rounds) == 7
    assert backend.remaining == 0 and isinstance(backend.calls[-1].constraint, ItemListGrammar)
    assert traj.final_step.n == 0 and traj.totals()["rounds"] == 7
