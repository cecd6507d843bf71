"""The shared driver for backends that can continue a partial assistant message under a
regex (vLLM server, local transformers): one description of how a constrained answer is
built from steps, so every such backend enforces the grammar the same way.

* action turn: one step under the whole action regex; if the thought runs past its token
  budget, a second step continues after the (cut) thought line with "\\nAction: <action>".
* item list ("optimistic", the default): one step under the whole list regex, stopped at
  the first repeated line and kept up to it; then the rest the same way, each step under a
  regex over the options not chosen yet (a step whose first line is cut goes one line).
  "stepwise": one step per line over the options not chosen yet. Either way the lines are
  distinct by construction; a model that does not repeat itself costs one request, and a last
  line with a single option left is written without one (the grammar allows nothing else).
* choice: one step under the alternation of the options; asked with `top_logprobs`, one
  token (every label of the `score` ranker is one) and its top log-probabilities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import grammar as G
from toolrec_local.llm.protocol import (
    ActionGrammar, ChoiceGrammar, Completion, Constraint, ItemListGrammar, Message,
)


LIST_MODES = ("stepwise", "optimistic")
OPTIMISTIC_MAX_SIZE = 2000  # options x k; xgrammar took 2.5 s for 1000 x 10 (limit 5 s)


@dataclass
class Step:
    text: str  # the continuation only, without the prefix
    tokens_in: int
    tokens_out: int
    stopped: bool  # ended by itself (grammar complete / end of turn), not by max_tokens
    logprobs: dict[str, float] | None = None  # the first token's top log-probabilities, when asked


def repeats_a_line(text: str) -> bool:
    """Whether a finished line of `text` repeats an earlier one (the optimistic list stops there)."""
    done = text.split("\n")[:-1]
    return len(set(done)) < len(done)


def truncated(name: str, text: str) -> ToolrecError:
    """A step cut by its token limit (finish_reason "length") before the grammar was complete:
    the prompt left too little of the context, not a server ignoring the grammar."""
    return ToolrecError(
        f"{name}: the answer was cut at its token limit before it was complete: {text[-120:]!r}",
        "the prompt left too little of the model's context for the answer; serve a longer context "
        "(--max-model-len) or shorten the prompt (fewer or shorter candidate lists)",
    )


def check_list_mode(mode: str) -> str:
    if mode not in LIST_MODES:
        raise ToolrecError(f"unknown item-list mode {mode!r}", f"use one of: {', '.join(LIST_MODES)}")
    return mode


def option_token_budget(options) -> int:
    """Enough tokens for any option even if every byte were a token, plus a line break
    and the end-of-turn token: a list item must never be cut by max_tokens."""
    return max(len(o.encode("utf-8")) for o in options) + 2


def action_token_budget(g: ActionGrammar) -> int:
    longest_attr = max([len(a.encode("utf-8")) for a in g.retrieval_attributes] + [40])
    return len("\nAction: Retrieval[, ]") + longest_attr + len(str(g.max_k)) + 2


class StepwiseBackend:
    """Subclasses implement `_step`; `generate` is the whole protocol."""

    name: str = "stepwise"
    # "stepwise": one request per line, each over the options not chosen yet.
    # "optimistic": first the whole list under one regex, then line by line from the first
    # repeated line on (one request when the model does not repeat itself).
    list_mode: str = "stepwise"

    async def _step(self, messages: list[Message], prefix: str, regex: str | None, *,
                    max_tokens: int, temperature: float, seed: int | None,
                    stop_when: Callable[[str], bool] | None = None, top_logprobs: int = 0) -> Step:
        """Continue the assistant message `prefix` ("" = a fresh answer) under `regex`
        (None = unconstrained) and return only the continuation. With `stop_when`, generation
        may end early (stopped=False) once `stop_when(continuation so far)` is true. With
        `top_logprobs`, the step's first token's most likely tokens go into `Step.logprobs`."""
        raise NotImplementedError

    async def generate(self, messages: list[Message], constraint: Constraint, *,
                       max_tokens: int = 256, temperature: float = 0.0,
                       seed: int | None = None, top_logprobs: int = 0) -> Completion:
        t0 = time.perf_counter()
        steps: list[Step] = []

        async def step(prefix, regex, budget, i=0, stop_when=None, **asked):
            s = await self._step(messages, prefix, regex, max_tokens=budget, temperature=temperature,
                                 seed=None if seed is None else seed + i, stop_when=stop_when, **asked)
            steps.append(s)
            return s

        if constraint is None:
            text = (await step("", None, max_tokens)).text
        elif isinstance(constraint, ActionGrammar):
            text = await self._action(constraint, step)
        elif isinstance(constraint, ChoiceGrammar) and top_logprobs:
            # one token: the labels are single tokens (checked on connect: check_labels)
            text = (await step("", G.option_regex(constraint.options), 1, top_logprobs=top_logprobs)).text
        elif isinstance(constraint, ChoiceGrammar):
            s = await step("", G.option_regex(constraint.options), option_token_budget(constraint.options))
            text = s.text
        elif isinstance(constraint, ItemListGrammar):
            text = await self._items(constraint, step)
        else:
            raise TypeError(f"not a constraint: {constraint!r}")

        if not G.conforms(constraint, text):
            if steps and not steps[-1].stopped:
                raise truncated(self.name, text)
            raise ToolrecError(
                f"{self.name} returned text outside the grammar: {text[:200]!r}",
                "the server is not applying structured outputs; use a vLLM build with "
                "structured outputs (xgrammar or guidance backend) and the `structured_outputs` field",
            )
        return Completion(
            text=text,
            tokens_in=sum(s.tokens_in for s in steps),
            tokens_out=sum(s.tokens_out for s in steps),
            latency_s=time.perf_counter() - t0,
            calls=len(steps),
            logprobs=steps[0].logprobs if top_logprobs and steps else None,
        )

    async def _action(self, g: ActionGrammar, step) -> str:
        first = await step("", G.to_regex(g), g.thought_max_tokens + action_token_budget(g))
        if first.stopped and G.conforms(g, first.text):
            return first.text
        # The thought ran past its budget: keep its first line, then force the action.
        thought = first.text.split("\n", 1)[0].rstrip()
        if not thought.startswith(G.THOUGHT_PREFIX) or len(thought) <= len(G.THOUGHT_PREFIX):
            thought = G.THOUGHT_PREFIX + "..."
        regex = r"\n" + G.escape(G.ACTION_PREFIX) + G.action_regex(g)
        second = await step(thought, regex, action_token_budget(g), 1)
        return thought + second.text

    async def _items(self, g: ItemListGrammar, step) -> str:
        chosen: list[str] = []
        remaining = list(dict.fromkeys(g.options))
        if len(remaining) < g.k:
            raise ValueError(f"{g.k} distinct lines asked from {len(remaining)} distinct options")
        budget = option_token_budget(g.options)

        def keep(lines: list[str]) -> None:  # the lines up to the first one not allowed (a repeat)
            for line in lines:
                if line not in remaining:
                    break
                chosen.append(line)
                remaining.remove(line)

        while len(chosen) < g.k:
            need, before = g.k - len(chosen), len(chosen)
            if self.list_mode == "optimistic" and need > 1 and len(remaining) * need <= OPTIMISTIC_MAX_SIZE:
                # The rest of the list in one request, over the options not chosen yet; kept up
                # to its first repeated line (at least one line is new). Greedy, this gives the
                # line-by-line list (a repeat only ever stops it early), in fewer requests.
                if not chosen:
                    s = await step("", G.to_regex(ItemListGrammar(tuple(remaining), need)), budget * need,
                                   stop_when=repeats_a_line)
                    text = s.text
                else:
                    s = await step("\n".join(chosen), G.next_lines_regex(tuple(remaining), need), budget * need,
                                   before, stop_when=lambda t: repeats_a_line(t[1:]))
                    text = s.text[1:] if s.text.startswith("\n") else s.text
                lines = text.split("\n")
                if not s.stopped:
                    lines = lines[:-1]  # may be cut inside a line
                keep(lines)
                if len(chosen) > before:
                    continue
            if chosen and len(remaining) == 1:  # the last line has one option left: no request
                chosen.append(remaining.pop())
                continue
            i = len(chosen)
            if not chosen:
                s = await step("", G.option_regex(tuple(remaining)), budget)
                line = s.text
            else:
                s = await step("\n".join(chosen), G.next_line_regex(tuple(remaining)), budget, i)
                line = s.text[1:] if s.text.startswith("\n") else s.text
            if line not in remaining and not s.stopped:
                raise truncated(self.name, line)
            if line not in remaining:
                raise ToolrecError(
                    f"{self.name} wrote a list line outside the remaining options: {s.text[:120]!r}",
                    "the server is not applying structured outputs",
                )
            chosen.append(line)
            remaining.remove(line)
        return "\n".join(chosen)

    async def aclose(self) -> None:
        return None
