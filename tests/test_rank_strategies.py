"""`--rank-by score` (LlamaRec's verbalizer) and `--rank-shuffles N` (LLMRank's Borda over
shuffled orders) on ML-100K with scripted backends whose answers and log-probabilities are
known, the label set's tokens for the tokenizers the project ships, and the in-process
backend's log-probabilities under the choice mask."""

from __future__ import annotations

import asyncio
import math
import re

import pytest
from test_agent_support import CooccurrenceRetrieval

from toolrec_local.agent.baselines import llm_rank, top_candidates
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.memory import interleave
from toolrec_local.agent.rankers import borda, chunks
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.labels import LABELS, check_labels, label_scores, tokenizer_counts
from toolrec_local.llm.protocol import ChoiceGrammar, ItemListGrammar
from toolrec_local.settings import RunSettings

USER = 3
LABELLED = re.compile(r"^([A-Za-z])\. (\d+), ", re.M)


@pytest.fixture(scope="module")
def tool(ml100k):
    return CooccurrenceRetrieval(ml100k)


def rank(ml100k, tool, turns, n_candidates, k, **config):
    backend = ScriptedBackend(turns)
    ctx = AgentContext(ml100k, tool, backend, AgentConfig(**config))
    lists = top_candidates(tool, USER, "test", n_candidates)
    history = set(ml100k.split(USER, "test")[0].tolist())
    candidates = [i for i in interleave(lst.items for lst in lists) if i not in history]
    items, rnd = asyncio.run(llm_rank(ctx, USER, lists, k))
    return items, rnd, backend, candidates


def labelled_items(ml100k, messages) -> dict[str, int]:
    """label -> item, read back from the score prompt's labelled candidate lines."""
    return {m.group(1): ml100k.item_index[m.group(2)] for m in LABELLED.finditer(messages[-1]["content"])}


def item_value(item: int) -> float:
    """A known log-probability per item, with ties (items equal mod 7) and some -inf."""
    return float("-inf") if item % 11 == 0 else -float(item % 7)


def scripted_scores(ml100k, seen):
    """A score turn: the log-probabilities of item_value for the labels shown (a label whose
    item has -inf is left out, as a server's top_logprobs would); answers the best label."""
    def turn(messages, constraint):
        assert isinstance(constraint, ChoiceGrammar)
        shown = labelled_items(ml100k, messages)
        assert tuple(shown) == constraint.options == LABELS[: len(shown)]
        seen.append(list(shown.values()))
        logprobs = {label: item_value(i) for label, i in shown.items() if item_value(i) > float("-inf")}
        return max(logprobs, key=logprobs.get), logprobs
    return turn


def expected_order(candidates):
    return [candidates[j] for j in sorted(range(len(candidates)), key=lambda j: (-item_value(candidates[j]), j))]


def test_score_ranks_every_candidate_once_by_logprob_ties_by_shown_order(ml100k, tool):
    seen = []
    items, rnd, backend, candidates = rank(ml100k, tool, [scripted_scores(ml100k, seen)], 30, 30, rank_by="score")
    assert len(candidates) >= 25
    assert seen == [candidates]  # one request, the candidates labelled in the order shown
    assert items == expected_order(candidates)
    assert sorted(items) == sorted(candidates) and len(set(items)) == len(items)
    call = backend.calls[0]
    assert call.top_logprobs == len(candidates) and call.max_tokens == 1
    assert "Answer with the letter" in call.messages[-1]["content"]
    assert rnd.usage.calls == 1 and rnd.repairs == 0 and rnd.picked == len(items)


def test_score_top_k_is_the_head_of_the_full_order(ml100k, tool):
    items, _, _, candidates = rank(ml100k, tool, [scripted_scores(ml100k, [])], 30, 10, rank_by="score")
    assert items == expected_order(candidates)[:10]


def test_more_candidates_than_labels_are_scored_in_round_robin_chunks(ml100k, tool):
    seen = []
    items, rnd, backend, candidates = rank(ml100k, tool, [scripted_scores(ml100k, seen)] * 2, 80, 80,
                                           rank_by="score")
    assert len(candidates) > len(LABELS)
    n = math.ceil(len(candidates) / len(LABELS))
    assert len(backend.calls) == rnd.usage.calls == n == 2
    assert seen == [candidates[j::n] for j in range(n)]
    assert items == expected_order(candidates)  # merged by log-probability, ties by shown order


def test_chunks_are_near_equal_and_cover_every_candidate():
    for n in (1, 52, 53, 104, 105, 300):
        cands = list(range(100, 100 + n))
        parts = chunks(cands)
        assert len(parts) == math.ceil(n / 52)
        assert sorted(i for p in parts for i in p) == cands
        assert max(map(len, parts)) <= 52 and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_missing_labels_count_as_minus_infinity_and_markers_are_read():
    got = label_scores({"A": -1.0, "\u2581B": -0.5, " C": -2.0}, ("A", "B", "C", "D"))
    assert got == {"A": -1.0, "B": -0.5, "C": -2.0, "D": float("-inf")}
    with pytest.raises(ToolrecError, match="no log-probabilities"):
        label_scores(None, ("A",))


def test_borda_over_scripted_shuffled_rankings(ml100k, tool):
    answers = []

    def answer(order):
        def turn(messages, constraint):
            answers.append(messages[-1]["content"])
            return "\n".join(constraint.options[j] for j in order)
        return turn

    # three rankings of k=3 over the candidates' options (c0, c1, ...): Borda 3-2-1 points
    turns = [answer([0, 1, 2]), answer([1, 0, 3]), answer([3, 1, 0])]
    items, rnd, backend, candidates = rank(ml100k, tool, turns, 20, 3, rank_shuffles=2)
    c = candidates
    # c0: 3+2+1 = 6, c1: 2+3+2 = 7, c3: 2+3 = 5, c2: 1
    assert items == [c[1], c[0], c[3]]
    assert rnd.usage.calls == 3 and "Borda count over 3 orders" in rnd.note
    assert all(isinstance(call.constraint, ItemListGrammar) for call in backend.calls)
    # the shuffled prompts show the same candidate lines in other orders, seeded (a rerun: the same)
    lines = [[ln for ln in a.splitlines() if re.match(r"^\d+, ", ln)] for a in answers]
    assert sorted(lines[1]) == sorted(lines[0]) == sorted(lines[2]) and lines[1] != lines[0] != lines[2]
    answers_first = list(answers)
    answers.clear()
    rank(ml100k, tool, turns, 20, 3, rank_shuffles=2)
    assert answers == answers_first


def test_borda_ties_follow_the_first_ranking():
    # a: 2+1 = 3, b: 1+2 = 3 (tie: the first ranking put a first); c only in later ones
    assert borda([[1, 2], [2, 1]], [2, 1], 2) == [1, 2]
    assert borda([[1, 2], [3, 1], [3, 2]], [1, 2, 3], 3) == [3, 1, 2]


def test_settings_refuse_what_score_cannot_do():
    RunSettings(rank_by="score")
    for bad in ({"grammar": False}, {"rank_shuffles": 1}, {"answer_space": "catalogue"}):
        with pytest.raises(ToolrecError, match="--rank-by score does not go with"):
            RunSettings(rank_by="score", **bad)
    with pytest.raises(ToolrecError, match="--rank-shuffles"):
        RunSettings(rank_shuffles=-1)
    with pytest.raises(ToolrecError, match="--rank-by"):
        RunSettings(rank_by="vote")


def test_a_label_that_is_not_one_token_is_refused_before_any_user(ml100k, tool):
    class Split(ScriptedBackend):
        def label_token_counts(self, labels):
            return {label: 2 if label == "Q" else 1 for label in labels}

    with pytest.raises(ToolrecError, match="'Q'.*not single tokens"):
        AgentContext(ml100k, tool, Split([]), AgentConfig(rank_by="score"))
    AgentContext(ml100k, tool, Split([]), AgentConfig())  # generate: no check
    with pytest.raises(ToolrecError, match="not single tokens"):
        check_labels(Split([]))


@pytest.mark.parametrize("model", ["tiny_model_dir", "smollm2_dir", "tiny_qwen2_dir"])
def test_labels_are_single_tokens_where_the_answer_starts(request, model):
    """Every tokenizer the project ships offline to tests: tiny-random (make-tiny), SmolLM2,
    Qwen2.5 (the cards' other models are not on this machine)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    counts = tokenizer_counts(tok)
    assert counts == dict.fromkeys(LABELS, 1)


def test_local_backend_returns_label_logprobs_under_the_mask(tiny_model_dir):
    from toolrec_local.llm.backends.local import LocalBackend

    backend = LocalBackend(tiny_model_dir)
    labels = LABELS[:30]
    messages = [{"role": "user", "content": "A. 1, Toy Story\nB. 2, GoldenEye\nWhich letter?"}]
    c = asyncio.run(backend.generate(messages, ChoiceGrammar(labels), max_tokens=1, top_logprobs=len(labels)))
    scores = label_scores(c.logprobs, labels)
    assert set(c.logprobs) <= set(labels) and all(v > float("-inf") for v in scores.values())
    assert math.isclose(math.log(sum(math.exp(v) for v in scores.values())), 0.0, abs_tol=1e-4)  # the mask
    assert c.text == max(scores, key=scores.get) and c.calls == 1
    assert backend.label_token_counts(LABELS) == dict.fromkeys(LABELS, 1)


def test_rank_llm_gets_every_ranking_call_and_the_agent_model_every_turn(ml100k, tool):
    """--rank-llm: the agent's turns go to its backend, Rank and the final step to the ranker's."""
    from toolrec_local.agent.loop import run_agent
    from toolrec_local.llm.protocol import ActionGrammar

    def first_k(messages, constraint):
        return "\n".join(constraint.options[: constraint.k])

    agent = ScriptedBackend(["Thought: genre.\nAction: Retrieval[genre, 20]",
                             "Thought: rank.\nAction: Rank[None, 10]", "Thought: done.\nAction: Finish"])
    ranker = ScriptedBackend([first_k, first_k], name="ranker", context=4096)
    ctx = AgentContext(ml100k, tool, agent, AgentConfig(rank_llm="tiny-2"), rank_backend=ranker)
    assert ctx.rank_context_tokens == 4096 and ctx.context_tokens is None  # rank prompts fit the ranker's context
    traj = asyncio.run(run_agent(ctx, USER))
    assert agent.remaining == ranker.remaining == 0
    assert all(isinstance(c.constraint, ActionGrammar) for c in agent.calls)
    assert all(isinstance(c.constraint, ItemListGrammar) for c in ranker.calls)
    assert len(traj.final_items) == 10
    assert traj.to_dict()["ranker"] == ranker.name and traj.to_dict()["backend"] == agent.name  # recorded apart
