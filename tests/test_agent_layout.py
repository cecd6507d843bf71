"""Prompt layout for the server's prefix cache (issue 13): the prompts of one user's rounds,
rendered with real chat templates, extend each other byte for byte; the instructions are the
same for every user; Rank and the final step share their leading bytes; fitting a prompt into
a short context changes earlier bytes rarely, and never undoes itself."""

from __future__ import annotations

import asyncio
import os

import jinja2
import pytest
from test_agent_support import CooccurrenceRetrieval

from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.loop import run_agent
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import ActionGrammar, ItemListGrammar
from toolrec_local.llm.tiny import CHATML_TEMPLATE

VICUNA = os.path.join(os.path.dirname(__file__), "..", "serving", "vicuna.jinja")


def first_k(messages, constraint):
    return "\n".join(constraint.options[: constraint.k])


TURNS = ["Thought: a.\nAction: Retrieval[None, 20]", "Thought: b.\nAction: Retrieval[genre, 20]",
         "Thought: c.\nAction: Rank[director, 15]", first_k, "Thought: d.\nAction: Retrieval[release_year, 20]",
         "Thought: e.\nAction: Rank[None, 10]", first_k, "Thought: f.\nAction: Finish", first_k]


@pytest.fixture(scope="module")
def tool(ml100k):
    return CooccurrenceRetrieval(ml100k)


def templates():
    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    with open(VICUNA, encoding="utf-8") as fh:
        vicuna = env.from_string(fh.read())
    return {"chatml (tiny-random, SmolLM2)": env.from_string(CHATML_TEMPLATE), "vicuna": vicuna}


def render(template, messages) -> str:
    return template.render(messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")


def run(ml100k, tool, turns=TURNS, user=0, **config):
    backend = ScriptedBackend(turns)
    traj = asyncio.run(run_agent(AgentContext(ml100k, tool, backend, AgentConfig(**config)), user))
    return traj, backend


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("name", list(templates()))
def test_every_round_extends_the_previous_prompt_byte_for_byte(ml100k, tool, name):
    template = templates()[name]
    traj, backend = run(ml100k, tool)
    agent_calls = [c for c in backend.calls if isinstance(c.constraint, ActionGrammar)]
    assert len(agent_calls) == len(traj.rounds) == 6
    prompts = [render(template, c.messages) for c in agent_calls]
    for earlier, later in zip(prompts, prompts[1:]):
        assert later.startswith(earlier)  # the server's cached prefix is the whole previous prompt
    # the static part (instructions, demonstrations, profile, history) leads every prompt
    head = render(template, agent_calls[0].messages[:2])
    assert all(p.startswith(head.rsplit("ASSISTANT:", 1)[0].rsplit("<|im_start|>assistant", 1)[0]) for p in prompts)


def test_instructions_are_the_same_for_every_user(ml100k, tool):
    _, a = run(ml100k, tool, user=0)
    _, b = run(ml100k, tool, user=7)
    assert a.calls[0].messages[0] == b.calls[0].messages[0]  # system: instructions + demonstrations
    assert a.calls[0].messages[1] != b.calls[0].messages[1]  # the user comes after it
    rank_a = [c for c in a.calls if isinstance(c.constraint, ItemListGrammar)]
    rank_b = [c for c in b.calls if isinstance(c.constraint, ItemListGrammar)]
    assert {c.messages[0]["content"] for c in rank_a + rank_b} == {rank_a[0].messages[0]["content"]}


def test_rank_and_final_prompts_share_their_leading_bytes(ml100k, tool):
    template = templates()["chatml (tiny-random, SmolLM2)"]
    traj, backend = run(ml100k, tool)
    rank1, rank2, final = [render(template, c.messages) for c in backend.calls if isinstance(c.constraint, ItemListGrammar)]
    # each call shares everything up to its own instruction with the later calls: system, user,
    # then the lists in the order they were gathered
    lists_end = rank1.index("Please rank the")
    assert rank2[:lists_end] == rank1[:lists_end] and final[:lists_end] == rank1[:lists_end]
    lists_end2 = rank2.index("Please rank the")
    assert final[:lists_end2] == rank2[:lists_end2]
    # the shared part is most of the final prompt
    assert common_prefix(rank2, final) > 0.8 * len(final)
    # what every call shares is in the system message; each call's own instruction is one short
    # line after the lists (its tokens are new to the cache on every call)
    calls = [c for c in backend.calls if isinstance(c.constraint, ItemListGrammar)]
    assert "none of the user's historical movies" in calls[0].messages[0]["content"]
    tails = [c.messages[-1]["content"].rsplit("\n", 1)[-1] for c in calls]
    assert tails[0].startswith("Please rank the") and tails[-1].startswith("These are all")
    assert all(len(t) <= 130 and "historical" not in t for t in tails), tails


def test_fitting_into_a_short_context_changes_the_prefix_rarely(ml100k, tool):
    """Eight rounds that outgrow the context. When a prompt does not fit, every older full
    observation is shortened at once and stays short, so a cut changes bytes only from the
    first observation still in full (at the limit: the one added last round), and the system
    message, with its demonstration, stays as it was."""
    template = templates()["chatml (tiny-random, SmolLM2)"]
    turns = [f"Thought: more {n}.\nAction: Retrieval[{attr}, 30]" for n, attr in
             enumerate(["None", "genre", "release_year", "None", "genre", "release_year", "None", "genre"])]
    traj, backend = run(ml100k, tool, turns=turns + [first_k], context_tokens=2048, max_rounds=8, demos=1)
    calls = [c for c in backend.calls if isinstance(c.constraint, ActionGrammar)]
    assert len(calls) == 8 and traj.finished_by == "cap"
    prompts = [render(template, c.messages) for c in calls]
    short = [{i for i, m in enumerate(c.messages) if m["content"].endswith("(listed earlier).")} for c in calls]
    assert short[-1], "the context was never short: raise the rounds or lower the limit"
    assert all(earlier <= later for earlier, later in zip(short, short[1:]))  # what was shortened stays short
    assert all("Example 1:" in c.messages[0]["content"] for c in calls)  # the demonstration stayed
    breaks = [n for n in range(1, len(prompts)) if not prompts[n].startswith(prompts[n - 1])]
    assert 1 <= len(breaks) <= 3, breaks  # of 7 rounds; the others only append
    for n in breaks:  # what changed starts at the first observation the previous prompt had in full
        before = calls[n - 1].messages
        first_full = next(i for i in range(3, len(before), 2) if i not in short[n - 1])
        kept = len(template.render(messages=before[:first_full], add_generation_prompt=False))
        assert common_prefix(prompts[n - 1], prompts[n]) >= kept
