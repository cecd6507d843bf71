"""The in-process backend (transformers + llguidance) with SmolLM2-135M-Instruct: conforming
agent turns, distinct item lists, titles that defeat Outlines' own regex backend."""

from __future__ import annotations

import asyncio

import pytest

from toolrec_local.errors import ToolrecError
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar, ChoiceGrammar, ItemListGrammar

pytestmark = pytest.mark.slow

SYSTEM = ("You are a movie recommender. Answer in exactly two lines:\n"
          "Thought: <your reasoning>\nAction: Retrieval[<attribute>, <K>] or Rank[<attribute>, <K>] or Finish")
MSGS = [{"role": "system", "content": SYSTEM},
        {"role": "user", "content": "I watched Heat, Alien and Toy Story. What should I watch next?"}]
ACTION = ActionGrammar(("genre", "release_year"), max_k=20, thought_max_tokens=12)
HARD = ("Heat", "Heathers", "Alien", "Aliens", "Á köldum klaka (Cold Fever)", "Amélie", "What? [a+b]*")


@pytest.fixture(scope="module")
def smollm2(session_home):
    from toolrec_local.llm.registry import load_card

    card = load_card("smollm2-135m")
    if card.weights_dir() is None:
        try:
            from toolrec_local.llm.pull import pull

            pull("smollm2-135m")
        except ToolrecError as exc:
            pytest.skip(f"SmolLM2-135M weights absent and not obtainable: {exc.message}")
    from toolrec_local.llm.backends.local import LocalBackend

    return LocalBackend(card.require_weights(), name="local:smollm2-135m")


def test_agent_turns_conform_greedy_and_sampled(smollm2):
    async def go():
        greedy = [await smollm2.generate(MSGS, ACTION, temperature=0.0) for _ in range(2)]
        sampled = await asyncio.gather(*(smollm2.generate(MSGS, ACTION, temperature=1.0, seed=s) for s in range(3)))
        return greedy, sampled

    greedy, sampled = asyncio.run(go())
    for c in greedy + sampled:
        assert conforms(ACTION, c.text), c.text
        assert c.tokens_in > 50 and c.tokens_out > 3 and c.calls in (1, 2)
    assert greedy[0].text == greedy[1].text  # greedy is deterministic
    again = asyncio.run(smollm2.generate(MSGS, ACTION, temperature=1.0, seed=2))
    assert again.text == sampled[2].text  # a seed reproduces a sample


def test_item_lists_are_distinct_and_reach_hard_titles(smollm2):
    candidates = tuple(f"{i}, {t}" for i, t in enumerate(
        ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
         "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)",
         "Seven (Se7en) (1995)", "Usual Suspects, The (1995)", "Mighty Aphrodite (1995)"]))
    msgs = [{"role": "user", "content": "Rank these movies for a fan of crime films, one per line:\n"
             + "\n".join(candidates)}]

    from toolrec_local.llm.backends.local import LocalBackend

    stepwise = LocalBackend(smollm2.model_path, list_mode="stepwise")  # same loaded model

    async def go():
        out = [await smollm2.generate(msgs, ItemListGrammar(candidates, 10), temperature=0.0, seed=1),
               await stepwise.generate(msgs, ItemListGrammar(candidates, 10), temperature=1.0, seed=1)]
        # every option must be writable: asking for all of them forces each one out
        out.append(await smollm2.generate(MSGS, ItemListGrammar(HARD, len(HARD)), temperature=1.0, seed=7))
        out.append(await smollm2.generate(MSGS, ChoiceGrammar(("Heat", "Heathers")), temperature=0.0))
        return out

    optimistic, line_by_line, hard, choice = asyncio.run(go())
    for c in (optimistic, line_by_line):
        assert conforms(ItemListGrammar(candidates, 10), c.text), c.text
    assert 1 <= optimistic.calls <= 10 and line_by_line.calls == 10
    assert sorted(hard.text.split("\n")) == sorted(HARD)
    assert choice.text in ("Heat", "Heathers")


def test_unconstrained_mode_and_missing_model(smollm2, tmp_path):
    c = asyncio.run(smollm2.generate(MSGS, None, max_tokens=12))
    assert 0 < c.tokens_out <= 12 and c.text
    from toolrec_local.llm.backends.local import LocalBackend

    with pytest.raises(ToolrecError, match="no model"):
        LocalBackend(tmp_path)
