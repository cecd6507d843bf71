"""A `Backend` that replays scripted answers, for agent tests.

Each turn is a string or a function `(messages, constraint) -> str`; a turn for a call that
asks for log-probabilities (`top_logprobs`) may instead be (or return) `(text, logprobs)`,
the log-probabilities a server would return for the answer's first token. An answer that does not
conform to the call's constraint raises `ScriptError`: a wrong script fails loudly instead of
testing the agent on output no real backend could produce. Every call is recorded.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Union

from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import Completion, Constraint, Message

Turn = Union[str, tuple, Callable[[list[Message], Constraint], Union[str, tuple]]]


class ScriptError(AssertionError):
    """The script is wrong (exhausted, or an answer outside the constraint)."""


@dataclass
class ScriptedCall:
    messages: list[Message]
    constraint: Constraint
    max_tokens: int
    temperature: float
    seed: int | None
    text: str
    top_logprobs: int = 0


class ScriptedBackend:
    def __init__(self, turns: list[Turn], name: str = "scripted", context: int | None = None):
        self.turns = list(turns)
        self.name = name
        self.context = context  # the context it says it serves (None: it does not say)
        self.calls: list[ScriptedCall] = []
        self.closed = False

    def context_tokens(self) -> int | None:
        return self.context

    @property
    def remaining(self) -> int:
        return len(self.turns) - len(self.calls)

    async def generate(self, messages: list[Message], constraint: Constraint, *, max_tokens: int = 256,
                       temperature: float = 0.0, seed: int | None = None, top_logprobs: int = 0) -> Completion:
        t0 = time.perf_counter()
        i = len(self.calls)
        if i >= len(self.turns):
            raise ScriptError(f"script exhausted: call {i + 1} but only {len(self.turns)} turns scripted")
        turn = self.turns[i]
        text = turn(copy.deepcopy(messages), constraint) if callable(turn) else turn
        logprobs = None
        if isinstance(text, tuple):
            text, logprobs = text
            if not top_logprobs:
                raise ScriptError(f"turn {i + 1} scripts log-probabilities for a call that did not ask for them")
        if not isinstance(text, str):
            raise ScriptError(f"turn {i + 1} produced {type(text).__name__}, not str")
        if not conforms(constraint, text):
            raise ScriptError(f"turn {i + 1} does not conform to {type(constraint).__name__}: {text!r}")
        self.calls.append(ScriptedCall(copy.deepcopy(messages), constraint, max_tokens, temperature, seed, text,
                                       top_logprobs))
        # token counts are whitespace-separated words: no tokenizer here
        return Completion(text=text, tokens_in=sum(len(str(m.get("content", "")).split()) for m in messages),
                          tokens_out=len(text.split()), latency_s=time.perf_counter() - t0, calls=1,
                          logprobs=dict(logprobs) if logprobs is not None else None)

    async def aclose(self) -> None:
        self.closed = True
