"""What one agent run did, round by round: JSON-serialisable records.

Items are kept twice: internal ids (`*_items`, for metrics) and the dataset's raw ids
(strings) in `to_dict()`, which is what people and files see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolrec_local.llm.protocol import Completion

# The cost and counters every LLM method's record carries (the eval runner writes them, the
# summary adds them up): the LLM's usage, then what memory and the parser counted; and beside
# them each fallback taken, by name ("fallbacks": FALLBACKS below).
USAGE_FIELDS = ("llm_calls", "tokens_in", "tokens_out", "latency_s")
COUNT_FIELDS = ("retries", "repairs", "grammar_violations")
STAT_FIELDS = USAGE_FIELDS + COUNT_FIELDS + ("invalid_items", "overhead_s", "rounds")
# Fallbacks that change a result, counted per user (Round.fallbacks, Trajectory.fallbacks;
# `totals()["fallbacks"]`), summed per method in summary.json, shown by `eval` and `report`.
FALLBACKS = {
    "candidates_cut": "Rank/final prompts cut to fit the context (candidates dropped, shown once, or K reduced)",
    "final_skipped": "final rankings skipped (their prompt did not fit; the last-list answer used)",
    "topup": "final steps topped up from the backbone (fewer than N gathered)",
    "context_shortened": "agent prompts shortened to fit the context (observations or thoughts)",
    "demos_dropped": "demonstrations dropped to fit the context",
    "context_ended": "agent runs ended because their prompt no longer fit",
    "padded": "final lists padded by retrieval score",
}


def add_counts(into: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for name, n in counts.items():
        if n:
            into[name] = into.get(name, 0) + n
    return into


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
    # A score ranking only (--rank-by score): each request's candidates in label order (A, B, ...).
    labelled: list[list[int]] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)  # FALLBACKS taken in this step

    def count(self, fallback: str, n: int = 1) -> None:
        add_counts(self.fallbacks, {fallback: n})

    def stats(self) -> dict:
        """This step's cost and counters: STAT_FIELDS but rounds, and its fallbacks."""
        return {"llm_calls": self.usage.calls, "tokens_in": self.usage.tokens_in, "tokens_out": self.usage.tokens_out,
                "latency_s": round(self.usage.latency_s, 4), "retries": self.retries, "repairs": self.repairs,
                "grammar_violations": self.grammar_violations, "invalid_items": self.invalid_items,
                "overhead_s": round(self.overhead_s, 6), "fallbacks": add_counts(dict.fromkeys(FALLBACKS, 0), self.fallbacks)}


@dataclass
class Trajectory:
    user: str  # raw user id
    history_items: list[int]
    target_item: int
    grammar: bool
    backend: str
    rounds: list[Round] = field(default_factory=list)
    ranker: str = ""  # --rank-llm: the backend the ranking calls went to ("": `backend`)
    final_items: list[int] = field(default_factory=list)
    finished_by: str = ""  # "finish" | "cap" | "plan" | "context" (the prompt could not fit any more)
    final_note: str = ""  # how the final list was made (the final ranking, top-up, cut, padding)
    finish_mode: str = "llm"  # "llm": the final step ranks every gathered list; "last-list": no LLM call
    # The final step, after Finish or the cap: the LLM's ranking over every gathered list
    # ("llm"), or the last list cut or padded ("last-list": no call, zero usage).
    final_step: Round | None = None
    # What the "last-list" ablation answers from this same trajectory (no LLM cost): the last
    # stored list cut or padded by score, computed before the final step.
    last_list_items: list[int] = field(default_factory=list)
    last_list_note: str = ""
    last_list_fallbacks: dict[str, int] = field(default_factory=dict)  # the last-list answer's padding
    fallbacks: dict[str, int] = field(default_factory=dict)  # the agent's own prompt (conversation.py)
    item_ids: list[str] = field(default_factory=list, repr=False, compare=False)  # dataset's raw ids

    def _steps(self, with_finish: bool) -> list[Round]:
        return self.rounds + ([self.final_step] if with_finish and self.final_step is not None else [])

    def totals(self, with_finish: bool = True) -> dict:
        """Cost and counters of the run; `with_finish=False`: without the final step's LLM call
        (what the "last-list" answer cost)."""
        steps = self._steps(with_finish)
        per_step = [r.stats() for r in steps]
        out = {"rounds": len(self.rounds), **{f: sum(s[f] for s in per_step) for f in STAT_FIELDS if f != "rounds"}}
        out["latency_s"] = round(sum(r.usage.latency_s for r in steps), 4)  # rounded once, as a sum
        out["overhead_s"] = round(sum(r.overhead_s for r in steps), 6)
        out["fallbacks"] = dict.fromkeys(FALLBACKS, 0)
        for counts in [s["fallbacks"] for s in per_step] + [self.fallbacks] + ([] if with_finish else [self.last_list_fallbacks]):
            add_counts(out["fallbacks"], counts)
        return out

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
            **({"ranker": self.ranker} if self.ranker else {}),
            "totals": self.totals(with_finish=not last),
            "rounds": [_round_dict(r, raw) for r in self.rounds],
        }
        if last:
            out["variant_of"] = self.finish_mode
        else:
            out["finish"] = _round_dict(self.final_step, raw) if self.final_step is not None else None
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
        **({"fallbacks": dict(r.fallbacks)} if r.fallbacks else {}),
    }
