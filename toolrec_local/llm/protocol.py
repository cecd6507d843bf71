"""The one interface between the agent and any LLM: `Backend.generate(messages, constraint)`.

The agent never knows which backend it talks to. Every call carries a constraint that the
backend must enforce (vLLM `structured_outputs`, Outlines in process, OpenAI JSON schema),
or `None` only in the explicit unconstrained mode (`--no-grammar`).

Text formats the constraints describe (the agent's parser reads exactly these):

* agent turn (`ActionGrammar`):   "Thought: <one line of text>\\nAction: <action>"
  where <action> is one of
      Retrieval[<attr>, <K>]   <attr> in grammar.retrieval_attributes or "None"
      Rank[<attr>, <K>]        <attr> "None" or free words [A-Za-z][A-Za-z0-9 _&'-]{0,39}
      Finish
  and <K> is a decimal integer 1..grammar.max_k with no leading zero.
* item list (`ItemListGrammar`):  exactly k lines joined by "\\n", each one of
  grammar.options (an option is "<item id>" or "<item id>, <name>"), all k distinct.
* choice (`ChoiceGrammar`):       exactly one of the options. Asked with `top_logprobs=n`, a
  backend also returns the n most likely first tokens of the answer with their log-probabilities
  (`Completion.logprobs`), taken after the constraint's mask (the `score` ranker reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable


@dataclass(frozen=True)
class ActionGrammar:
    """One agent turn: a bounded one-line thought, then exactly one action."""

    retrieval_attributes: tuple[str, ...]  # the dataset's attributes ("None" is always allowed too)
    max_k: int = 50
    thought_max_tokens: int = 96  # bounds the thought through max_tokens, not a {m,n} repetition


@dataclass(frozen=True)
class ItemListGrammar:
    """k distinct lines, each one of `options`. Options are built per request from the
    candidate set only, so the grammar stays small."""

    options: tuple[str, ...]
    k: int

    def __post_init__(self):
        if not 1 <= self.k <= len(self.options):
            raise ValueError(f"k={self.k} must be between 1 and the {len(self.options)} options")


@dataclass(frozen=True)
class ChoiceGrammar:
    options: tuple[str, ...]


Constraint = Union[ActionGrammar, ItemListGrammar, ChoiceGrammar, None]


@dataclass
class Completion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    calls: int = 1  # underlying requests (an item list may take one request per item)
    meta: dict = field(default_factory=dict)
    # A choice asked with top_logprobs: the answer's first token's most likely tokens (text ->
    # log-probability, the constraint's mask applied); None when not asked.
    logprobs: dict[str, float] | None = None


Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@runtime_checkable
class Backend(Protocol):
    """An LLM the agent can call. Implementations: vllm (server), local (transformers +
    Outlines in process), openai (API). All are async; `local` serialises its calls."""

    name: str  # e.g. "vllm:smollm2-135m"

    async def generate(
        self,
        messages: list[Message],
        constraint: Constraint,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        top_logprobs: int = 0,  # a ChoiceGrammar only (see the module's doc); 0: not asked
    ) -> Completion: ...

    async def aclose(self) -> None: ...


def context_tokens(backend) -> int | None:
    """The context `backend` serves (its `context_tokens()`: what its server enforces, else
    its model card's); None for a backend that does not say (the tests' scripted ones)."""
    ask = getattr(backend, "context_tokens", None)
    return ask() if callable(ask) else None
