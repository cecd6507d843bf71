"""`--rank-by score` on a real vLLM server (the tiny random model, served with
--max-logprobs 52 --logprobs-mode raw_logprobs by `build_command`): the ranking holds every
candidate once, in the order of the label log-probabilities the server returns, checked
against a second request's."""

from __future__ import annotations

import asyncio

from test_agent_support import CooccurrenceRetrieval

from toolrec_local.agent.baselines import llm_rank, top_candidates
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.memory import interleave
from toolrec_local.llm.backends.vllm import VLLMBackend
from toolrec_local.llm.labels import LABELS, label_scores
from toolrec_local.llm.protocol import ChoiceGrammar

USER = 3


class Recording:
    """The backend, with each score request's messages and constraint kept."""

    def __init__(self, backend):
        self.backend, self.asked = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    async def generate(self, messages, constraint, **kw):
        self.asked.append((messages, constraint, kw))
        return await self.backend.generate(messages, constraint, **kw)


def test_score_ranking_follows_the_servers_label_logprobs(vllm_servers, ml100k):
    srv = vllm_servers("xgrammar")
    tool = CooccurrenceRetrieval(ml100k)
    backend = Recording(VLLMBackend(srv.base_url, srv.model))
    ctx = AgentContext(ml100k, tool, backend, AgentConfig(rank_by="score"))  # checks the labels with /tokenize
    lists = top_candidates(tool, USER, "test", 30)
    history = set(ml100k.split(USER, "test")[0].tolist())
    candidates = [i for i in interleave(lst.items for lst in lists) if i not in history]

    async def go():
        try:
            items, rnd = await llm_rank(ctx, USER, lists, len(candidates))
            messages, constraint, kw = backend.asked[0]
            again = await backend.backend.generate(messages, constraint, **kw)
            return items, rnd, again
        finally:
            await backend.backend.aclose()

    items, rnd, again = asyncio.run(go())
    assert len(backend.asked) == 1 and rnd.usage.calls == 1
    messages, constraint, kw = backend.asked[0]
    labels = LABELS[: len(candidates)]
    assert isinstance(constraint, ChoiceGrammar) and constraint.options == labels
    assert kw["top_logprobs"] == len(labels) and kw["max_tokens"] == 1
    assert sorted(items) == sorted(candidates) and len(set(items)) == len(candidates)
    # the second request's log-probabilities: every label has one (the mask leaves only labels)
    scores = label_scores(again.logprobs, labels)
    assert set(again.logprobs) <= set(labels)
    assert all(v > float("-inf") for v in scores.values())
    by_item = dict(zip(candidates, (scores[label] for label in labels)))
    ranked = [by_item[i] for i in items]
    assert all(a >= b - 1e-4 for a, b in zip(ranked, ranked[1:])), ranked  # descending, up to float noise
    assert again.text == max(scores, key=scores.get) or scores[again.text] >= max(scores.values()) - 1e-4
