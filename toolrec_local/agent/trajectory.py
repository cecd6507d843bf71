"""What one agent run did, round by round: JSON-serialisable records.

Items are kept twice: internal ids (`*_items`, for metrics) and the dataset's raw ids
(strings) in `to_dict()`, which is what people and files see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolrec_local.llm.protocol import Completion


@dataclass
class Usage:
    """LLM cost of one step: summed over every request it made (retries and the steps of a
    stepwise backend included)."""

    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    calls: int = 0

    def add(self, c: Completion) -> None:
        self.tokens_in += c.tokens_in
        self.tokens_out += c.tokens_out
        self.latency_s += c.latency_s
        self.calls += max(1, c.calls)

    def merge(self, other: "Usage") -> None:
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.latency_s += other.latency_s
        self.calls += other.calls


@dataclass
class Round:
    n: int
    thought: str = ""
    action: str = ""  # canonical action text, or the raw reply when it did not parse
    items: list[int] = field(default_factory=list)  # the observation's items (internal ids)
    note: str = ""  # "Invalid action: ...", clamping, repair or padding, in words
    usage: Usage = field(default_factory=Usage)
    retries: int = 0  # tool re-runs after memory rejected items
    repairs: int = 0  # deterministic repairs (drop invalid, fill by score)
    grammar_violations: int = 0  # grammar mode only: replies outside the grammar's language
    invalid_items: int = 0  # items memory rejected (history, unknown, duplicate, not a candidate)
    overhead_s: float = 0.0  # time spent outside the LLM (rendering, tools, memory)
    # An LLM ranking step only: the lists its prompt showed, in order, as (mark, items), and how
    # many leading items of its answer the LLM wrote (the rest were filled by a repair).
    shown: list[tuple[str, list[int]]] = field(default_factory=list)
    picked: int = 0


@dataclass
class Trajectory:
    user: str  # raw user id
    history_items: list[int]
    target_item: int
    grammar: bool
    backend: str
    rounds: list[Round] = field(default_factory=list)
    final_items: list[int] = field(default_factory=list)
    finished_by: str = ""  # "finish" | "cap" | "plan" | "context" (the prompt could not fit any more)
    final_note: str = ""  # how the final list was made (the final ranking, top-up, cut, padding)
    finish_mode: str = "llm"  # "llm": the final step ranks every gathered list; "last-list": no LLM call
    # The final step, after Finish or the cap: the LLM's ranking over every gathered list
    # ("llm"), or the last list cut or padded ("last-list": no call, zero usage).
    finish: Round | None = None
    # What the "last-list" ablation answers from this same trajectory (no LLM cost): the last
    # stored list cut or padded by score, computed before the final step.
    last_list_items: list[int] = field(default_factory=list)
    last_list_note: str = ""
    item_ids: list[str] = field(default_factory=list, repr=False, compare=False)  # dataset's raw ids

    def _steps(self, with_finish: bool) -> list[Round]:
        return self.rounds + ([self.finish] if with_finish and self.finish is not None else [])

    def totals(self, with_finish: bool = True) -> dict:
        """Cost and counters of the run; `with_finish=False`: without the final step's LLM call
        (what the "last-list" answer cost)."""
        steps = self._steps(with_finish)
        return {
            "rounds": len(self.rounds),
            "tokens_in": sum(r.usage.tokens_in for r in steps),
            "tokens_out": sum(r.usage.tokens_out for r in steps),
            "llm_calls": sum(r.usage.calls for r in steps),
            "latency_s": round(sum(r.usage.latency_s for r in steps), 4),
            "overhead_s": round(sum(r.overhead_s for r in steps), 6),
            "retries": sum(r.retries for r in steps),
            "repairs": sum(r.repairs for r in steps),
            "grammar_violations": sum(r.grammar_violations for r in steps),
            "invalid_items": sum(r.invalid_items for r in steps),
        }

    def tools_used(self) -> set[str]:
        return {r.action.split("[")[0] for r in self.rounds if r.action.split("[")[0] in ("Retrieval", "Rank", "Finish")}

    def to_dict(self, variant: str | None = None) -> dict:
        """The trajectory as people and files see it. `variant="last-list"`: the same rounds
        with the last-list answer as the result (its final list, note and cost)."""
        raw = lambda items: [self.item_ids[i] for i in items]  # noqa: E731
        last = variant == "last-list"
        out = {
            "user": self.user,
            "history": raw(self.history_items),
            "target": self.item_ids[self.target_item] if self.target_item else None,
            "final": raw(self.last_list_items if last else self.final_items),
            "finished_by": self.finished_by,
            "final_note": self.last_list_note if last else self.final_note,
            "finish_mode": "last-list" if last else self.finish_mode,
            "grammar": self.grammar,
            "backend": self.backend,
            "totals": self.totals(with_finish=not last),
            "rounds": [_round_dict(r, raw) for r in self.rounds],
        }
        if last:
            out["variant_of"] = self.finish_mode
        else:
            out["finish"] = _round_dict(self.finish, raw) if self.finish is not None else None
            out["last_list"] = {"final": raw(self.last_list_items), "note": self.last_list_note,
                                "totals": self.totals(with_finish=False)}
        return out


def _round_dict(r: Round, raw) -> dict:
    shown = {"shown": [{"mark": m, "items": raw(items)} for m, items in r.shown], "picked": r.picked} if r.shown else {}
    return {
        "thought": r.thought,
        "action": r.action,
        "observation": raw(r.items),
        "note": r.note,
        "tokens_in": r.usage.tokens_in,
        "tokens_out": r.usage.tokens_out,
        "latency_s": round(r.usage.latency_s, 4),
        "llm_calls": r.usage.calls,
        "retries": r.retries,
        "repairs": r.repairs,
        "grammar_violations": r.grammar_violations,
        "invalid_items": r.invalid_items,
        **shown,
    }
