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
    final_note: str = ""  # how Finish built the list (cut, padded from candidates, backbone)
    item_ids: list[str] = field(default_factory=list, repr=False, compare=False)  # dataset's raw ids

    def totals(self) -> dict:
        return {
            "rounds": len(self.rounds),
            "tokens_in": sum(r.usage.tokens_in for r in self.rounds),
            "tokens_out": sum(r.usage.tokens_out for r in self.rounds),
            "llm_calls": sum(r.usage.calls for r in self.rounds),
            "latency_s": round(sum(r.usage.latency_s for r in self.rounds), 4),
            "overhead_s": round(sum(r.overhead_s for r in self.rounds), 6),
            "retries": sum(r.retries for r in self.rounds),
            "repairs": sum(r.repairs for r in self.rounds),
            "grammar_violations": sum(r.grammar_violations for r in self.rounds),
            "invalid_items": sum(r.invalid_items for r in self.rounds),
        }

    def tools_used(self) -> set[str]:
        return {r.action.split("[")[0] for r in self.rounds if r.action.split("[")[0] in ("Retrieval", "Rank", "Finish")}

    def to_dict(self) -> dict:
        raw = lambda items: [self.item_ids[i] for i in items]  # noqa: E731
        return {
            "user": self.user,
            "history": raw(self.history_items),
            "target": self.item_ids[self.target_item] if self.target_item else None,
            "final": raw(self.final_items),
            "finished_by": self.finished_by,
            "final_note": self.final_note,
            "grammar": self.grammar,
            "backend": self.backend,
            "totals": self.totals(),
            "rounds": [
                {
                    "thought": r.thought,
                    "action": r.action,
                    "observation": raw(r.items),
                    "note": r.note,
                    "tokens_in": r.usage.tokens_in,
                    "tokens_out": r.usage.tokens_out,
                    "latency_s": round(r.usage.latency_s, 4),
                    "retries": r.retries,
                    "repairs": r.repairs,
                    "grammar_violations": r.grammar_violations,
                    "invalid_items": r.invalid_items,
                }
                for r in self.rounds
            ],
        }
