"""The authors' conditions as switches, and every fallback counted, on ML-100K with a real
(co-occurrence) retrieval tool and scripted turns:

* `answer_space`: "gathered" (Rank and the final step may name only gathered items) or
  "catalogue" (any catalogue item outside the history, as the authors' code accepts);
* `history="keep"`: the retrieval lists hold history items (the authors' RecBole tools do
  not mask them), answers never do;
* each fallback that changes a result is counted (trajectory.FALLBACKS)."""

from __future__ import annotations

import asyncio

import pytest
from test_agent_support import CooccurrenceRetrieval

from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.baselines import llm_rank
from toolrec_local.agent.loop import run_agent
from toolrec_local.agent.actions import Retrieval
from toolrec_local.agent.memory import ToolList
from toolrec_local.agent.trajectory import FALLBACKS
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import ItemListGrammar

USER = 0


@pytest.fixture(scope="module")
def tool(ml100k):
    return CooccurrenceRetrieval(ml100k)


def run(ds, tool, turns, **config):
    backend = ScriptedBackend(turns)
    ctx = AgentContext(ds, tool, backend, AgentConfig(**config))
    return asyncio.run(run_agent(ctx, USER)), backend


def line(ds, item: int) -> str:
    return f"{ds.item_ids[item]}, {ds.item_names[item]}"


def outsider(ds, tool, gathered) -> int:
    """A catalogue item outside the user's history that the agent did not gather."""
    history = set(int(i) for i in ds.split(USER, "test")[0])
    return next(i for i in range(1, ds.n_items + 1) if i not in history and i not in set(gathered))


def first_k(messages, constraint):
    return "\n".join(constraint.options[: constraint.k])


TURNS = ["Thought: genre.\nAction: Retrieval[genre, 12]", "Thought: done.\nAction: Finish"]


@pytest.mark.parametrize("space", ["gathered", "catalogue"])
def test_the_final_grammar_is_the_answer_space(ml100k, tool, space):
    """Under the grammar: the final step's options are the gathered items, or the whole
    catalogue; never a history item. Under `catalogue` an item no tool returned is answered."""
    ds = ml100k
    history = set(int(i) for i in ds.split(USER, "test")[0])
    gathered = [i for i, _ in tool.retrieve(USER, "genre", 12)]
    x = outsider(ds, tool, gathered)

    def answer(messages, constraint):  # the non-gathered item first, where the grammar allows it
        lines = [o for o in constraint.options if o != line(ds, x)][: constraint.k]
        return "\n".join(([line(ds, x)] + lines[:-1]) if line(ds, x) in constraint.options else lines)

    traj, backend = run(ds, tool, TURNS + [answer], answer_space=space)
    options = set(backend.calls[-1].constraint.options)
    assert not options & {line(ds, i) for i in history}
    if space == "catalogue":
        assert len(options) == ds.n_items - len(history) and line(ds, x) in options
        assert traj.final_items[0] == x and "answers from the catalogue" in traj.final_note
    else:
        assert options == {line(ds, i) for i in gathered}
        assert x not in traj.final_items and set(traj.final_items) <= set(gathered)
    # the prompt is the same: the gathered lists, whatever the answer space
    assert backend.calls[-1].messages[-1]["content"].count("\n" + line(ds, gathered[0]) + ", ") == 1
    assert len(traj.final_items) == 10 == len(set(traj.final_items)) and not set(traj.final_items) & history


@pytest.mark.parametrize("space", ["gathered", "catalogue"])
def test_memory_accepts_a_catalogue_item_only_under_catalogue_and_a_history_item_never(ml100k, tool, space):
    """Free text (nothing constrains the answer): a non-gathered catalogue item is kept under
    `catalogue` and refused under `gathered`; a history item is refused under both."""
    ds = ml100k
    history = [int(i) for i in ds.split(USER, "test")[0]]
    gathered = [i for i, _ in tool.retrieve(USER, "genre", 12)]
    x = outsider(ds, tool, gathered)
    first = "\n".join([line(ds, x), line(ds, history[-1])] + [line(ds, i) for i in gathered[:8]])
    again = "\n".join([line(ds, x)] + [line(ds, i) for i in gathered[:9]])
    traj, backend = run(ds, tool, TURNS + [first, again, again, again], answer_space=space, grammar=False)
    rerun = backend.calls[3].messages[-1]["content"]
    assert f"'{line(ds, history[-1])}' is in the user's history" in rerun
    if space == "catalogue":
        assert traj.final_step.invalid_items == 1 and backend.remaining == 2  # accepted on the second try
        assert traj.final_items[0] == x and "is not among the candidates" not in rerun
    else:
        assert f"'{line(ds, x)}' is not among the candidates" in rerun
        assert x not in traj.final_items and traj.final_step.repairs == 1  # refused every time, then repaired
    assert history[-1] not in traj.final_items and len(set(traj.final_items)) == 10


def test_catalogue_rank_may_answer_beyond_the_gathered_items(ml100k, tool):
    ds = ml100k
    turns = ["Thought: genre.\nAction: Retrieval[genre, 12]", "Thought: rank.\nAction: Rank[None, 5]", None,
             "Thought: done.\nAction: Finish", first_k]
    gathered = [i for i, _ in tool.retrieve(USER, "genre", 12)]
    x = outsider(ds, tool, gathered)
    turns[2] = "\n".join([line(ds, x)] + [line(ds, i) for i in gathered[:4]])
    traj, backend = run(ds, tool, turns, answer_space="catalogue")
    assert isinstance(backend.calls[2].constraint, ItemListGrammar) and traj.rounds[1].items[0] == x
    assert "\n1. " + line(ds, x) in backend.calls[-1].messages[-1]["content"]  # the final step sees the Rank list


def test_history_keep_shows_history_items_in_retrieval_but_never_answers_them(ml100k, tool):
    """`--history keep`: the tools stop masking the history (as the authors' RecBole tools),
    so observations and the final prompt list history items; answers stay outside it."""
    ds = ml100k
    history = set(int(i) for i in ds.split(USER, "test")[0])
    turns = ["Thought: plain.\nAction: Retrieval[None, 30]", "Thought: done.\nAction: Finish", first_k]
    traj, backend = run(ds, tool, turns, history="keep", answer_space="catalogue")
    kept = [i for i in traj.rounds[0].items if i in history]
    assert kept, "the co-occurrence tool ranks the user's own items high once they are not masked"
    observation = backend.calls[1].messages[-1]["content"]
    assert line(ds, kept[0]) in observation
    final = backend.calls[-1]
    assert line(ds, kept[0]) in final.messages[-1]["content"]  # shown in its list, as retrieved
    assert not {line(ds, i) for i in history} & set(final.constraint.options)
    assert not set(traj.final_items) & history and len(set(traj.final_items)) == 10
    assert not set(traj.last_list_items) & history and len(traj.last_list_items) == 10
    masked, backend = run(ds, tool, turns)
    assert not set(masked.rounds[0].items) & history  # the default masks them


def test_history_keep_counts_only_answerable_items_for_the_top_up(ml100k, tool):
    """Under `keep` and `gathered`, the top-up is sized by the items that may be answered."""
    ds = ml100k
    history = set(int(i) for i in ds.split(USER, "test")[0])
    turns = ["Thought: plain.\nAction: Retrieval[None, 12]", "Thought: done.\nAction: Finish", first_k]
    traj, backend = run(ds, tool, turns, history="keep")
    answerable = [i for i in traj.rounds[0].items if i not in history]
    assert len(answerable) < 10 and traj.totals()["fallbacks"]["topup"] == 1
    assert len(backend.calls[-1].constraint.options) == 10 and not set(traj.final_items) & history


def test_catalogue_adds_no_top_up(ml100k, tool):
    turns = ["Thought: a.\nAction: Retrieval[genre, 4]", "Thought: done.\nAction: Finish", first_k]
    traj, backend = run(ml100k, tool, turns, answer_space="catalogue")
    assert "Top-up" not in backend.calls[-1].messages[-1]["content"] and traj.totals()["fallbacks"]["topup"] == 0
    assert len(set(traj.final_items)) == 10


# ---- every fallback counted ---------------------------------------------------------------
FITTED_TURNS = ["Thought: a\nAction: Retrieval[genre, 30]", "Thought: b\nAction: Retrieval[None, 30]",
                "Thought: c\nAction: Retrieval[release_year, 30]", "Thought: d\nAction: Rank[None, 10]", first_k,
                "Thought: e\nAction: Finish"]


def test_totals_name_every_fallback_and_count_none_when_nothing_falls_back(ml100k, tool):
    turns = ["Thought: a.\nAction: Retrieval[genre, 20]", "Thought: done.\nAction: Finish", first_k]
    traj, _ = run(ml100k, tool, turns)
    assert traj.totals()["fallbacks"] == dict.fromkeys(FALLBACKS, 0)


def test_a_context_limit_counts_cut_candidates_shortened_prompts_and_dropped_demos(ml100k, tool):
    traj, _ = run(ml100k, tool, FITTED_TURNS + [first_k], context_tokens=1600, history_len=5)
    counts = traj.totals()["fallbacks"]
    assert traj.rounds[3].fallbacks == {"candidates_cut": 1} and traj.final_step.fallbacks.get("candidates_cut") == 1
    assert counts["candidates_cut"] == 2 and counts["context_shortened"] >= 1 and counts["demos_dropped"] >= 1
    assert counts["final_skipped"] == counts["context_ended"] == 0


def test_a_skipped_final_ranking_is_counted_with_the_padding_it_took_over(ml100k, tool):
    turns = ["Thought: a\nAction: Retrieval[genre, 30]", "Thought: b\nAction: Rank[None, 4]", first_k,
             "Thought: e\nAction: Finish"]
    traj, backend = run(ml100k, tool, turns, context_tokens=1000, history_len=5, demos=0)
    assert "final ranking skipped" in traj.final_note and len(backend.calls) == 4
    counts = traj.totals()["fallbacks"]
    assert counts["final_skipped"] == 1 and counts["padded"] == 1  # the last list (4 items) was padded
    assert traj.final_items == traj.last_list_items


def test_a_run_ended_by_the_context_is_counted(ml100k, tool):
    traj, _ = run(ml100k, tool, [], context_tokens=300)
    assert traj.finished_by == "context"
    counts = traj.totals()["fallbacks"]
    assert counts["context_ended"] == 1 and counts["final_skipped"] == 1


def test_padding_of_the_last_list_counts_for_its_own_answer_only(ml100k, tool):
    turns = ["Thought: a.\nAction: Retrieval[genre, 12]", "Thought: b.\nAction: Rank[None, 3]", first_k,
             "Thought: c.\nAction: Finish", first_k]
    traj, _ = run(ml100k, tool, turns)  # the LLM's final step: N candidates, no padding
    assert traj.totals()["fallbacks"]["padded"] == 0
    assert traj.totals(with_finish=False)["fallbacks"]["padded"] == 1  # the last-list answer: 3 + 7 padded
    assert traj.to_dict(variant="last-list")["totals"]["fallbacks"]["padded"] == 1
    last, _ = run(ml100k, tool, turns[:4], finish="last-list")
    assert last.totals()["fallbacks"]["padded"] == 1


def test_llm_rank_reports_its_cut_candidates(ml100k, tool):
    ds = ml100k
    pairs = tool.retrieve(USER, None, 30)
    lists = [ToolList(Retrieval(None, 30), [i for i, _ in pairs], [s for _, s in pairs])]
    ctx = AgentContext(ds, tool, ScriptedBackend([first_k]), AgentConfig(context_tokens=1200, demos=0, history_len=3))
    items, rnd = asyncio.run(llm_rank(ctx, USER, lists, 10))
    stats = rnd.stats()
    assert len(items) == 10 and stats["fallbacks"]["candidates_cut"] == 1 and "of 30 candidates shown" in rnd.note
    assert set(stats["fallbacks"]) == set(FALLBACKS)
