"""The agent's message history, and how it is fitted into the model's context.

Layout, chosen for the server's prefix cache (vLLM reuses the KV of a prompt's leading bytes
when an earlier request had the same ones):

    system     instructions + demonstrations     the same for every user of a run
    user       profile, history, task            the same in every round of one user
    assistant  turn 1        user  observation 1
    assistant  turn 2        user  observation 2  ...   each round only appends

With a context limit, a prompt that does not fit is made smaller in steps, and a step once
taken is never undone, so the prompt's leading bytes change as rarely as possible:
1. every full observation but the newest is shortened to its one-line form, all at once
   (one change now instead of one every round);
2. then the newest observation too;
3. then one demonstration fewer (this changes the system message, so it comes late; in
   round 1 it decides how many demonstrations the run keeps);
4. then the oldest remaining thought is omitted, one at a time.
When nothing is left to shorten the run ends ("context").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Step:
    """One round as later prompts see it."""

    turn: str  # the assistant's turn (canonical when it parsed)
    observation: str
    short: str  # the observation once shortened
    brief: str = ""  # the turn without its thought, when the context is short (default: turn)
    shortened: bool = False
    briefed: bool = False


class Conversation:
    def __init__(self, ctx, task: str):
        self.ctx = ctx
        self.task = task
        self.steps: list[Step] = []
        self.demos = ctx.config.demos  # only ever lowered
        self.fallbacks: dict[str, int] = {}  # shrink steps taken to fit the context (trajectory.FALLBACKS)

    def add(self, step: Step) -> None:
        self.steps.append(step)

    def messages(self) -> list[dict] | None:
        """The next prompt, fitted into the context; None when it cannot fit any more."""
        window = self.ctx.config.observation_window
        if window is not None:
            for step in self.steps[: max(0, len(self.steps) - window)]:
                step.shortened = True
        messages = self._build()
        for shrink in (self._shorten_older, self._shorten_newest, self._fewer_demos, self._brief_oldest):
            while not self.ctx.fits(messages, self.ctx.action_reply_tokens):
                if not shrink():
                    break
                kind = "demos_dropped" if shrink == self._fewer_demos else "context_shortened"
                self.fallbacks[kind] = self.fallbacks.get(kind, 0) + 1
                messages = self._build()
            else:
                return messages
        return None

    def _build(self) -> list[dict]:
        messages = [{"role": "system", "content": self.ctx.renderer.system_with(self.demos)},
                    {"role": "user", "content": self.task}]
        for step in self.steps:
            messages.append({"role": "assistant", "content": (step.brief or step.turn) if step.briefed else step.turn})
            messages.append({"role": "user", "content": step.short if step.shortened else step.observation})
        return messages

    def _shorten_older(self) -> bool:
        older = [s for s in self.steps[:-1] if not s.shortened]
        for step in older:
            step.shortened = True
        return bool(older)

    def _shorten_newest(self) -> bool:
        if self.steps and not self.steps[-1].shortened:
            self.steps[-1].shortened = True
            return True
        return False

    def _fewer_demos(self) -> bool:
        if self.demos > 0:
            self.demos -= 1
            return True
        return False

    def _brief_oldest(self) -> bool:
        for step in self.steps:
            if not step.briefed:
                step.briefed = True
                return True
        return False
