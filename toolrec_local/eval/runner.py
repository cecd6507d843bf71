"""The concurrent, resumable runner: every (method, seed, user) of a run, each written once.

Work = for each seed, the sampled users (or every evaluation user), cut to this shard; minus
what results.jsonl already holds as `ok`. Score methods run in batches of users (a user in
several seeds is scored once); LLM methods run users concurrently, at most `concurrency` at a
time. Each finished user is one flushed line, so a killed run loses only users in flight.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from toolrec_local.errors import ToolrecError
from toolrec_local.eval.methods import ListMethod, LLMMethod, Outcome, ScoreMethod
from toolrec_local.metrics import MISSING, mask_history, rank_in_list, ranks_from_scores, top_n_from_scores
from toolrec_local.eval.results import FAILED, OK, ResultsWriter

STAT_FIELDS = ("llm_calls", "tokens_in", "tokens_out", "latency_s", "retries", "repairs", "grammar_violations",
               "invalid_items", "overhead_s", "rounds")


def plan_users(ds, users: int | None, seeds: list[int], shard: tuple[int, int] | None) -> dict[int, list[int]]:
    """seed -> internal user ids. Shard i of n keeps every n-th (seed, user) pair, starting at
    i-1, over the pairs in (seed, user) order: deterministic, and balanced across shards."""
    plan: dict[int, list[int]] = {}
    pos = 0
    for seed in seeds:
        pool = ds.eval_users if users is None else ds.sample_users(users, seed)
        kept = []
        for u in pool:
            if shard is None or pos % shard[1] == shard[0] - 1:
                kept.append(int(u))
            pos += 1
        plan[seed] = kept
    return plan


@dataclass
class Tally:
    """Running figures of one method in this invocation (for the progress display)."""

    total: int = 0  # this method's work in the run, done before included
    done: int = 0  # ok, before or now
    failed: int = 0  # failed in this invocation
    hits10: float = 0.0  # over the users done (before and now)
    ndcg10: float = 0.0
    scored: int = 0
    tokens_out: int = 0
    started: float = field(default_factory=time.monotonic)
    last_error: str = ""

    def add(self, rank: float, tokens_out: int) -> None:
        self.done += 1
        self.scored += 1
        if rank < 10:
            self.hits10 += 1
            self.ndcg10 += 1.0 / np.log2(rank + 2.0)
        self.tokens_out += tokens_out

    @property
    def recall10(self) -> float:
        return self.hits10 / self.scored if self.scored else 0.0

    @property
    def ndcg(self) -> float:
        return self.ndcg10 / self.scored if self.scored else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / max(1e-9, time.monotonic() - self.started)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_record(ds, method: str, seed: int, user: int, part: str, *, final: list[int], rank: float,
                stats: dict | None = None, status: str = OK, error: str | None = None, wall_s: float = 0.0) -> dict:
    _, target = ds.split(user, part)
    stats = stats or {}
    rec = {
        "dataset": ds.name,
        "method": method,
        "seed": int(seed),
        "user": ds.user_ids[user],
        "target": ds.item_ids[target],
        "rank": None if not np.isfinite(rank) else int(rank),
        "final": [ds.item_ids[i] for i in final],
        "status": status,
        "error": error,
    }
    for f in STAT_FIELDS:
        rec[f] = stats.get(f, 0)
    rec["wall_s"] = round(wall_s, 4)
    rec["time"] = _now()
    return rec


class Runner:
    def __init__(self, ds, writer: ResultsWriter, *, part: str = "test", top_n: int = 10, batch_size: int = 256,
                 concurrency: int = 1, on_update: Callable[[str, Tally], None] | None = None,
                 max_failures_in_a_row: int | None = None, exclude_history: bool = True):
        self.ds = ds
        self.exclude_history = exclude_history  # False: `--history keep`, score methods rank history items too
        self.writer = writer
        self.part = part
        self.top_n = top_n
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.on_update = on_update or (lambda name, tally: None)
        self.max_failures_in_a_row = max_failures_in_a_row or max(10, 2 * self.concurrency)
        self.tallies: dict[str, Tally] = {}

    def todo(self, method: str, plan: dict[int, list[int]]) -> list[tuple[int, int]]:
        done = self.writer.done()
        return [(s, u) for s, users in plan.items() for u in users if (method, s, self.ds.user_ids[u]) not in done]

    def _tally(self, method: str, plan: dict[int, list[int]]) -> Tally:
        """The method's tally, its running metrics started from the users done before."""
        total = sum(len(v) for v in plan.values())
        t = self.tallies[method] = Tally(total=total)
        for seed, users in plan.items():
            for u in users:
                rec = self.writer.index.get((method, seed, self.ds.user_ids[u]))
                if rec is not None and rec["status"] == OK:
                    t.add(MISSING if rec["rank"] is None else float(rec["rank"]), 0)
        self.on_update(method, t)
        return t

    # ---- score methods ----------------------------------------------------
    def run_scores(self, method: ScoreMethod, plan: dict[int, list[int]]) -> Tally:
        todo = self.todo(method.name, plan)
        tally = self._tally(method.name, plan)
        by_user: dict[int, list[int]] = {}
        for seed, user in todo:
            by_user.setdefault(user, []).append(seed)
        users = np.array(sorted(by_user), dtype=np.int64)
        for start in range(0, len(users), self.batch_size):
            batch = users[start:start + self.batch_size]
            t0 = time.perf_counter()
            scores = method.scores(batch, self.part)
            splits = [self.ds.split(int(u), self.part) for u in batch]
            targets = np.array([t for _, t in splits], dtype=np.int64)
            histories = [np.asarray(h, dtype=np.int64) for h, _ in splits]
            masked = mask_history(scores, histories)
            ranks = ranks_from_scores(masked, targets)
            tops = top_n_from_scores(masked, self.top_n)
            per_user = (time.perf_counter() - t0) / len(batch)
            for u, rank, top in zip(batch, ranks, tops):
                for seed in by_user[int(u)]:
                    self.writer.write(make_record(self.ds, method.name, seed, int(u), self.part, final=top,
                                                  rank=float(rank), wall_s=per_user))
                    tally.add(float(rank), 0)
                    self.on_update(method.name, tally)
        return tally

    # ---- list methods (P5) ------------------------------------------------
    def run_lists(self, method: ListMethod, plan: dict[int, list[int]]) -> Tally:
        todo = self.todo(method.name, plan)
        tally = self._tally(method.name, plan)
        by_user: dict[int, list[int]] = {}
        for seed, user in todo:
            by_user.setdefault(user, []).append(seed)
        users = np.array(sorted(by_user), dtype=np.int64)
        for start in range(0, len(users), self.batch_size):
            batch = users[start:start + self.batch_size]
            t0 = time.perf_counter()
            lists = method.lists(batch, self.part, self.top_n, exclude_history=self.exclude_history)
            per_user = (time.perf_counter() - t0) / len(batch)
            for u, final in zip(batch, lists):
                _, target = self.ds.split(int(u), self.part)
                rank = rank_in_list(final[: self.top_n], target)
                for seed in by_user[int(u)]:
                    self.writer.write(make_record(self.ds, method.name, seed, int(u), self.part,
                                                  final=final[: self.top_n], rank=rank, wall_s=per_user))
                    tally.add(rank, 0)
                    self.on_update(method.name, tally)
        return tally

    # ---- LLM methods ------------------------------------------------------
    async def run_llm(self, method: LLMMethod, plan: dict[int, list[int]]) -> Tally:
        todo = self.todo(method.name, plan)
        tally = self._tally(method.name, plan)
        work = iter(todo)
        state = {"in_a_row": 0, "ok": 0, "stop": False}

        async def one(seed: int, user: int) -> None:
            t0 = time.perf_counter()
            try:
                out: Outcome = await method.run(user, seed, self.part)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of one user is recorded, then retried on re-run
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, ToolrecError) and exc.hint:
                    error += f" ({exc.hint})"
                rec = make_record(self.ds, method.name, seed, user, self.part, final=[], rank=MISSING,
                                  status=FAILED, error=error, wall_s=time.perf_counter() - t0)
                rec["traceback"] = traceback.format_exc(limit=6)
                self.writer.write(rec)
                tally.failed += 1
                tally.last_error = error
                state["in_a_row"] += 1
                if state["in_a_row"] >= self.max_failures_in_a_row:  # the server died: stop, not fail them all
                    state["stop"] = True
            else:
                _, target = self.ds.split(user, self.part)
                rank = rank_in_list(out.final, target)
                rec = make_record(self.ds, method.name, seed, user, self.part, final=out.final[: self.top_n],
                                  rank=rank if rank < self.top_n else MISSING, stats=out.stats,
                                  wall_s=time.perf_counter() - t0)
                self.writer.write(rec, out.trajectory)
                tally.add(rank if rank < self.top_n else MISSING, int(out.stats.get("tokens_out", 0)))
                state["in_a_row"] = 0
                state["ok"] += 1
            self.on_update(method.name, tally)

        async def worker() -> None:
            for seed, user in work:
                if state["stop"]:
                    return
                await one(seed, user)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(1, len(todo))))))
        if state["stop"]:
            what = (f"the first {state['in_a_row']} users all failed" if state["ok"] == 0 else
                    f"{state['in_a_row']} users in a row failed after {state['ok']} finished")
            raise ToolrecError(
                f"method {method.name}: {what}, stopped (last error: {tally.last_error})",
                "fix the cause (is the LLM server up? see --server), then re-run the same command: "
                "finished users are kept, failed ones are retried",
            )
        return tally

    async def run(self, methods: list, plan: dict[int, list[int]]) -> dict[str, Tally]:
        for m in methods:
            if isinstance(m, ScoreMethod):
                self.run_scores(m, plan)
            elif isinstance(m, ListMethod):
                self.run_lists(m, plan)
            else:
                await self.run_llm(m, plan)
        return self.tallies
