"""The vLLM backend against real vLLM servers (tiny random model, CPU): every constrained
answer conforms, for each structured-output backend; the probe catches a server that ignores
the constraint; a wrong model name is a clear error."""

from __future__ import annotations

import asyncio

import pytest

from toolrec_local.errors import ToolrecError
from toolrec_local.llm.backends.vllm import VLLMBackend
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar, ChoiceGrammar, ItemListGrammar

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ACTION = ActionGrammar(("genre", "release_year", "class"), max_k=20, thought_max_tokens=16)
# Options that trip regex engines: prefixes of others, non-ASCII, metacharacters.
TITLES = ("12, Heat (1995)", "13, Heathers (1989)", "3, Alien (1979)", "4, Aliens (1986)",
          "7, Á köldum klaka (Cold Fever) (1994)", "9, What? [a+b]* {x} | $5 ^ \\ .",
          "21, Amélie (2001)", "22, Nausicaä of the Valley of the Wind (1984)") + tuple(
          f"{100 + i}, Movie {i} ({1950 + i})" for i in range(22))
IDS = ("1", "12", "123", "2", "21", "3")  # bare ids: each of 1/12/123 extends another
MSGS = [{"role": "system", "content": "You recommend movies."},
        {"role": "user", "content": "I liked Heat. Think, then act."}]
N = 20


class LegacyFieldBackend(VLLMBackend):
    """Sends the pre-0.10 `guided_regex` field, which vLLM now ignores (HTTP 200)."""

    def _constraint_body(self, regex):
        return {"guided_regex": regex}


b_steps: list = []


class RecordingBackend(VLLMBackend):
    """Records which server each step of each answer (asyncio task) went to."""

    async def _step(self, *args, **kw):
        from toolrec_local.llm.backends.vllm import _SERVER

        b_steps.append((id(asyncio.current_task()), _SERVER.get().url))
        return await super()._step(*args, **kw)


async def _many(backend, constraint, n, **kw):
    return await asyncio.gather(*(backend.generate(MSGS, constraint, temperature=1.0, seed=i, **kw)
                                  for i in range(n)))


def test_probe_rejects_a_server_that_ignores_the_constraint(vllm_servers):
    srv = vllm_servers("xgrammar")
    with pytest.raises(ToolrecError, match="ignores structured outputs"):
        asyncio.run(LegacyFieldBackend(srv.base_url, srv.model).connect())


def test_wrong_model_name_lists_what_is_served(vllm_servers):
    srv = vllm_servers("xgrammar")
    with pytest.raises(ToolrecError, match=f"serves: .*{srv.model}"):
        asyncio.run(VLLMBackend(srv.base_url, "no-such-model").connect())


def test_round_robin_and_token_counts(vllm_servers):
    srv = vllm_servers("xgrammar")
    other = srv.base_url.replace("127.0.0.1", "localhost")

    async def go():
        b = RecordingBackend([srv.base_url, other], srv.model)
        outs = [await b.generate(MSGS, ChoiceGrammar(TITLES), temperature=1.0, seed=i) for i in range(4)]
        # concurrent answers: each keeps all its steps on the server it was given
        b_steps.clear()
        lists = await asyncio.gather(*(b.generate(MSGS, ItemListGrammar(TITLES, 3), temperature=1.0, seed=i)
                                       for i in range(4)))
        await b.aclose()
        return outs, lists

    outs, lists = asyncio.run(go())
    assert [o.meta["server"] for o in outs] == [srv.base_url, other] * 2
    assert all(o.tokens_in > 10 and o.tokens_out >= 3 and o.calls == 1 for o in outs)
    assert sorted(o.meta["server"] for o in lists) == sorted([srv.base_url, other] * 2)
    assert all(o.tokens_in > 10 and o.tokens_out >= 3 for o in lists)  # streamed steps counted too
    by_task: dict = {}
    for task, url in b_steps:
        by_task.setdefault(task, set()).add(url)
    assert len(by_task) >= 4 and all(len(urls) == 1 for urls in by_task.values())


@pytest.mark.parametrize("structured_backend", ["xgrammar", "guidance", "outlines"])
def test_constrained_answers_always_conform(vllm_servers, structured_backend):
    srv = vllm_servers(structured_backend)

    async def go():
        b = VLLMBackend(srv.base_url, srv.model, structured_backend=structured_backend)
        stepwise = VLLMBackend(srv.base_url, srv.model, list_mode="stepwise")
        await b.connect()
        actions = await _many(b, ACTION, N)
        lists = await _many(b, ItemListGrammar(TITLES, 5), N)
        lists_stepwise = await _many(stepwise, ItemListGrammar(TITLES, 5), N)
        ids = await _many(b, ItemListGrammar(IDS, len(IDS)), 3)  # every id, prefixes included
        ids += await _many(stepwise, ItemListGrammar(IDS, len(IDS)), 3)
        choices = await _many(b, ChoiceGrammar(TITLES), N)
        await b.aclose()
        await stepwise.aclose()
        return actions, lists, lists_stepwise, ids, choices

    actions, lists, lists_stepwise, ids, choices = asyncio.run(go())
    for c in actions:
        assert conforms(ACTION, c.text), c.text
        assert c.calls in (1, 2)  # a thought past its budget is cut, then the action forced
    for c in lists + lists_stepwise:
        assert conforms(ItemListGrammar(TITLES, 5), c.text), c.text
    assert all(1 <= c.calls <= 5 for c in lists) and all(c.calls == 5 for c in lists_stepwise)
    for c in ids:
        assert sorted(c.text.split("\n")) == sorted(IDS)
    assert all(conforms(ChoiceGrammar(TITLES), c.text) for c in choices)
    # temperature 1.0 on a random model: answers vary (the constraint is not collapsing them)
    assert len({c.text for c in lists}) > 1 and len({c.text for c in lists_stepwise}) > 1


def test_a_run_fits_a_server_that_serves_less_context_than_its_card(vllm_servers, ml100k_tools, tmp_path, monkeypatch):
    """The tiny server serves --max-model-len 2048; the card here claims 8192 (a server started
    by hand, or `serve -- --max-model-len ...`, differs from its card the same way). The agent
    reads 2048 from /v1/models and fits every prompt into it: the runs complete, where prompts
    sized for the card are refused by the server (HTTP 400)."""
    import shutil

    from toolrec_local.agent.context import AgentConfig, AgentContext
    from toolrec_local.agent.loop import run_agent
    from toolrec_local.llm.factory import make_backend
    from toolrec_local.llm.registry import models_dir

    srv = vllm_servers("xgrammar")
    cards = tmp_path / "models"
    shutil.copytree(models_dir(), cards)
    card = cards / "tiny-random.yaml"
    card.write_text(card.read_text().replace('"--max-model-len", "2048"', '"--max-model-len", "8192"')
                    .replace("context_length: 4096", "context_length: 8192"))
    monkeypatch.setenv("TOOLREC_MODELS_DIR", str(cards))
    tool = ml100k_tools
    ds = tool.dataset
    # Long prompts: 40 history items, 2 demonstrations, 30 items per observation.
    config = AgentConfig(history_len=40, observe_items=30, max_rounds=4, temperature=1.0)

    async def go(backend):
        ctx = AgentContext(ds, tool, backend, config)
        try:
            return ctx.context_tokens, [await run_agent(ctx, u, seed=i) for i, u in enumerate(users)]
        finally:
            await backend.aclose()

    users = ds.sample_users(3, seed=1)
    limit, trajs = asyncio.run(go(make_backend("tiny-random", "vllm", base_url=srv.base_url, api_key=srv.api_key)))
    assert limit == 2048
    per_call = [r.usage.tokens_in / r.usage.calls for t in trajs for r in t.rounds if r.usage.calls]
    assert all(len(t.final_items) == 10 for t in trajs), [t.final_note for t in trajs]
    assert 1024 < max(per_call) <= 2048  # prompts long enough to matter, all within the served context
