"""Per-user accounting of LLM calls while they happen.

The eval runner puts a `UserMeter` in the context of each user it runs (`metering`); every
LLM call of the agent and of the rank baselines passes through `AgentContext.ask`, which
reports it here (`note_call`). The runner reads the meters for its live progress (calls,
rounds, tokens before any user has finished) and for its capacity limiter (how many KV-cache
tokens a user's conversation holds on the server). Outside a metered run nothing happens.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

from toolrec_local.llm.protocol import ActionGrammar, Completion, Constraint


@dataclass
class UserMeter:
    calls: int = 0  # LLM requests (a Completion may take several: stepwise lists)
    rounds: int = 0  # agent turns (calls under the action grammar)
    tokens_in: int = 0
    tokens_out: int = 0
    footprint: int = 0  # the largest prompt + reply budget of one request: KV tokens it holds
    on_call: Callable[["UserMeter", Completion, bool], None] | None = None  # (meter, call, new round)

    def add(self, completion: Completion, max_tokens: int, constraint: Constraint) -> None:
        new_round = isinstance(constraint, ActionGrammar)
        self.calls += max(1, completion.calls)
        self.rounds += new_round
        self.tokens_in += completion.tokens_in
        self.tokens_out += completion.tokens_out
        per_request = completion.tokens_in // max(1, completion.calls)
        self.footprint = max(self.footprint, per_request + max_tokens)
        if self.on_call is not None:
            self.on_call(self, completion, new_round)


_CURRENT: ContextVar[UserMeter | None] = ContextVar("toolrec_user_meter", default=None)


def note_call(completion: Completion, max_tokens: int, constraint: Constraint) -> None:
    """Count one finished LLM call against the user in flight in this context, if any."""
    meter = _CURRENT.get()
    if meter is not None:
        meter.add(completion, max_tokens, constraint)


@contextmanager
def metering(meter: UserMeter):
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)
