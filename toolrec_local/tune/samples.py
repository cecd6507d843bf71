"""The samples `toolrec-local tune` trains on: the prompts the `score` ranker sends
(agent/rankers.py, `--rank-by score`), labelled with the item the user consumed next.

Each user gives up to two prompts, both made by the real ranking path (`baselines.llm_rank`
under `rank_by="score"`) with a backend that records each request instead of answering it:

* "backbone": the backbone's top 30 (what llmrank ranks),
* "final": SASRec's and every attribute tool's lists, 30 distinct candidates in all, under the
  final step's prompt (what ToolRec's final step ranks after gathering several lists).

The labelled position is each user's validation item (`part="valid"`: the history is everything
before it). The backbone and the attribute tools train on `Dataset.train_sequence`, which stops
before the validation item, and see it only to choose their epoch; so these candidates are no
easier than at test, where the tools rank an item they have never been trained on either. The
test item is never labelled. A prompt is kept only when the validation item is among its
candidates (the other candidates are the negatives); the rest are counted, not dropped silently.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

from toolrec_local.llm.labels import tokenizer_counts
from toolrec_local.llm.protocol import Completion

KINDS = ("backbone", "final")


@dataclass
class Sample:
    user: int  # internal user index
    kind: str  # one of KINDS
    messages: list[dict]
    labels: list[str]  # the labels shown, in order (A, B, ...)
    answer: str  # the validation item's label

    def to_dict(self) -> dict:
        return asdict(self)


class Recorder:
    """A Backend for the score ranker that records each request (messages, labels) and answers
    the first label, every label equally likely: the ranking it returns is the candidates' order,
    which is all the sample builder needs."""

    name = "tune-recorder"

    def __init__(self, tokenizer, context: int | None):
        self.tokenizer, self.context = tokenizer, context
        self.asked: list[tuple[list[dict], tuple[str, ...]]] = []

    def context_tokens(self) -> int | None:
        return self.context

    def label_token_counts(self, labels: tuple[str, ...]) -> dict[str, int]:
        return tokenizer_counts(self.tokenizer, labels)

    async def generate(self, messages, constraint, *, max_tokens: int = 256, temperature: float = 0.0,
                       seed: int | None = None, top_logprobs: int = 0) -> Completion:
        options = tuple(constraint.options)
        self.asked.append((messages, options))
        return Completion(text=options[0], logprobs=dict.fromkeys(options, 0.0))

    async def aclose(self) -> None:
        pass


def agent_context(ds, tool, tokenizer, context: int | None):
    """The AgentContext the samples are rendered with: the run defaults, `--rank-by score`, and
    the base model's context (what a server of it enforces)."""
    from toolrec_local.agent.context import AgentConfig, AgentContext
    from toolrec_local.settings import RunSettings

    config = AgentConfig.of(RunSettings(rank_by="score", part="valid"), context_tokens=context or 0)
    return AgentContext(ds, tool, Recorder(tokenizer, context), config)


async def user_samples(ctx, user: int, kinds=KINDS) -> tuple[list[Sample], int]:
    """This user's samples, and how many prompts were left out (the item not among their
    candidates)."""
    from toolrec_local.agent.baselines import llm_rank, multi_candidates, top_candidates

    _, target = ctx.dataset.split(user, "valid")
    samples, missed = [], 0
    for kind in kinds:
        tool = ctx.tool
        lists = (top_candidates(tool, user, "valid") if kind == "backbone"
                 else multi_candidates(tool, user, list(tool.attributes), "valid"))
        ctx.backend.asked.clear()
        _, rnd = await llm_rank(ctx, user, lists, ctx.config.top_n, part="valid", final=kind == "final")
        for (messages, labels), items in zip(ctx.backend.asked, rnd.labelled):
            if target in items:
                samples.append(Sample(int(user), kind, messages, list(labels), labels[items.index(target)]))
            else:
                missed += 1
    return samples, missed


def build_samples(ctx, users, kinds=KINDS, on_user=None) -> tuple[list[Sample], int]:
    """Every user's samples (in `users`' order) and the prompts left out; `on_user(done)` after each."""
    async def body():
        out, missed = [], 0
        for n, user in enumerate(users, 1):
            got, miss = await user_samples(ctx, int(user), kinds)
            out += got
            missed += miss
            if on_user:
                on_user(n)
        return out, missed

    return asyncio.run(body())
