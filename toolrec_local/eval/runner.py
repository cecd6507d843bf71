"""The concurrent, resumable runner: every (method, seed, user) of a run, each written once.

Work = for each seed, the sampled users (or every evaluation user), cut to this shard; minus
what results.jsonl already holds as `ok`. Score methods run in batches of users (a user in
several seeds is scored once); LLM methods run users concurrently, each server taking as many
as its KV cache holds (capacity.py) or a fixed number. Each finished user is one flushed line,
so a killed run loses only users in flight.
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
from toolrec_local.eval.capacity import ServerSlots, fixed_slots
from toolrec_local.eval.methods import ListMethod, LLMMethod, Outcome, ScoreMethod
from toolrec_local.metrics import MISSING, mask_history, rank_in_list, ranks_from_scores, top_n_from_scores
from toolrec_local.eval.results import FAILED, OK, ResultsWriter
from toolrec_local.agent.trajectory import STAT_FIELDS
from toolrec_local.llm.meter import UserMeter, metering
from toolrec_local.llm.server_metrics import CacheUse, ServerWatch
from toolrec_local.settings import RunSettings

TICK_S = 5.0  # the live figures (and the servers' /metrics) are refreshed at least this often


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
class Live:
    """An LLM method's figures for the progress display, counted per LLM call (not only when a
    user finishes) and read from the servers' /metrics."""

    calls: int = 0
    rounds: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    in_flight: int = 0
    limit: int | None = None  # users the servers admit at once now (None: no limit known)
    # from the servers' /metrics (None without them): since the method started, the last interval
    server: CacheUse | None = None
    server_recent: CacheUse | None = None
    kv_usage: float | None = None
    started: float = field(default_factory=time.monotonic)

    def catch_up(self, stats: dict, meter: UserMeter) -> None:
        """What a finished user's record counts and did not pass through the meter (a method
        that calls no AgentContext)."""
        self.calls += max(0, int(stats.get("llm_calls", 0)) - meter.calls)
        self.tokens_in += max(0, int(stats.get("tokens_in", 0)) - meter.tokens_in)
        self.tokens_out += max(0, int(stats.get("tokens_out", 0)) - meter.tokens_out)
        self.rounds += max(0, int(stats.get("rounds", 0)) - meter.rounds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / max(1e-9, time.monotonic() - self.started)


@dataclass
class Tally:
    """One method's results in this run so far (users done before included), and its live figures."""

    total: int = 0  # this method's work in the run, done before included
    done: int = 0  # ok, before or now
    failed: int = 0  # failed in this invocation
    hits10: float = 0.0  # over the users done (before and now)
    ndcg10: float = 0.0
    scored: int = 0
    last_error: str = ""
    live: Live = field(default_factory=Live)

    def add(self, rank: float) -> None:
        self.done += 1
        self.scored += 1
        if rank < 10:
            self.hits10 += 1
            self.ndcg10 += 1.0 / np.log2(rank + 2.0)

    @property
    def recall10(self) -> float:
        return self.hits10 / self.scored if self.scored else 0.0

    @property
    def ndcg(self) -> float:
        return self.ndcg10 / self.scored if self.scored else 0.0


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
    if "fallbacks" in stats:  # LLM methods: each fallback that changed the answer, counted
        rec["fallbacks"] = dict(stats["fallbacks"])
    rec["wall_s"] = round(wall_s, 4)
    rec["time"] = _now()
    return rec


class Runner:
    def __init__(self, ds, writer: ResultsWriter, settings: RunSettings = RunSettings(), *, batch_size: int = 256,
                 concurrency: int = 1, on_update: Callable[[str, Tally], None] | None = None,
                 max_failures_in_a_row: int | None = None, slots: list[ServerSlots] | None = None,
                 route: Callable[[int], int] | None = None, watch: ServerWatch | None = None,
                 tick_s: float | None = None):
        self.ds = ds
        self.writer = writer
        self.part = settings.part
        self.top_n = settings.top_n
        self.exclude_history = settings.history == "exclude"  # False: `--history keep`, score methods rank history too
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.on_update = on_update or (lambda name, tally: None)
        self.max_failures_in_a_row = max_failures_in_a_row
        self.slots = slots  # one per server, in `route` order; None: `concurrency` users on one
        self.route = route or (lambda user: 0)
        self.watch = watch
        self.tick_s = tick_s or TICK_S
        self.tallies: dict[str, Tally] = {}

    def todo(self, method: str, plan: dict[int, list[int]], also: tuple[str, ...] = ()) -> list[tuple[int, int]]:
        """(seed, user) pairs whose record of `method` (or of any name in `also`) is missing."""
        done = self.writer.done()
        return [(s, u) for s, users in plan.items() for u in users
                if any((m, s, self.ds.user_ids[u]) not in done for m in (method, *also))]

    def _tally(self, method: str, plan: dict[int, list[int]]) -> Tally:
        """The method's tally, its running metrics started from the users done before."""
        total = sum(len(v) for v in plan.values())
        t = self.tallies[method] = Tally(total=total)
        for seed, users in plan.items():
            for u in users:
                rec = self.writer.index.get((method, seed, self.ds.user_ids[u]))
                if rec is not None and rec["status"] == OK:
                    t.add(MISSING if rec["rank"] is None else float(rec["rank"]))
        self.on_update(method, t)
        return t

    def _done(self, method: str, seed: int, user: int) -> bool:
        rec = self.writer.index.get((method, seed, self.ds.user_ids[user]))
        return rec is not None and rec["status"] == OK

    def record(self, method: str, seed: int, user: int, *, final: list[int], rank: float, stats: dict | None = None,
               trajectory: dict | None = None, error: str | None = None, trace: str | None = None,
               wall_s: float = 0.0, replaces: bool = False) -> None:
        """The one place a record is written (and counted): `error` makes it a failed one;
        `replaces`: it supersedes the `ok` row of this key an interrupted run left (results.py)."""
        rec = make_record(self.ds, method, seed, user, self.part, final=final, rank=rank, stats=stats,
                          status=OK if error is None else FAILED, error=error, wall_s=wall_s)
        if trace is not None:
            rec["traceback"] = trace
        if replaces:
            rec["replaces"] = True
        self.writer.write(rec, trajectory)
        tally = self.tallies[method]
        if error is None:
            if not replaces:  # counted once
                tally.add(rank)
        else:
            tally.failed += 1
            tally.last_error = error
        self.on_update(method, tally)

    # ---- score methods ----------------------------------------------------
    def run_scores(self, method: ScoreMethod, plan: dict[int, list[int]]) -> Tally:
        def answer(batch: np.ndarray) -> tuple[list, list[float]]:
            scores = method.scores(batch, self.part, exclude_history=self.exclude_history)
            splits = [self.ds.split(int(u), self.part) for u in batch]
            targets = np.array([t for _, t in splits], dtype=np.int64)
            histories = [np.asarray(h, dtype=np.int64) for h, _ in splits]
            masked = mask_history(scores, histories if self.exclude_history else [])  # padding always
            return top_n_from_scores(masked, self.top_n), [float(r) for r in ranks_from_scores(masked, targets)]

        return self._run_batched(method.name, plan, answer)

    # ---- list methods (P5) ------------------------------------------------
    def run_lists(self, method: ListMethod, plan: dict[int, list[int]]) -> Tally:
        def answer(batch: np.ndarray) -> tuple[list, list[float]]:
            lists = [f[: self.top_n] for f in method.lists(batch, self.part, self.top_n,
                                                           exclude_history=self.exclude_history)]
            return lists, [rank_in_list(f, self.ds.split(int(u), self.part)[1]) for u, f in zip(batch, lists)]

        return self._run_batched(method.name, plan, answer)

    def _run_batched(self, name: str, plan: dict[int, list[int]],
                     answer: Callable[[np.ndarray], tuple[list, list[float]]]) -> Tally:
        """Users still to do, `batch_size` at a time: `answer(batch)` gives each user's top-N
        and the target's rank; one record per (seed, user)."""
        tally = self._tally(name, plan)
        by_user: dict[int, list[int]] = {}
        for seed, user in self.todo(name, plan):
            by_user.setdefault(user, []).append(seed)
        users = np.array(sorted(by_user), dtype=np.int64)
        for start in range(0, len(users), self.batch_size):
            batch = users[start:start + self.batch_size]
            t0 = time.perf_counter()
            finals, ranks = answer(batch)
            per_user = (time.perf_counter() - t0) / len(batch)
            for u, final, rank in zip(batch, finals, ranks):
                for seed in by_user[int(u)]:
                    self.record(name, seed, int(u), final=final, rank=rank, wall_s=per_user)
        return tally

    # ---- LLM methods ------------------------------------------------------
    async def run_llm(self, method: LLMMethod, plan: dict[int, list[int]]) -> Tally:
        """Users run concurrently, each server admitting users while they fit (`self.slots`,
        see capacity.py; by default `concurrency` users on one server); see `LLMPass`."""
        return await LLMPass(self, method, plan).run()

    async def run_user(self, method: LLMMethod, seed: int, user: int, meter: UserMeter) -> bool:
        """Run one user of an LLM method and record it: the method's row and its variants' (e.g.
        toolrec/last-list), all from this one run (one trajectory). Rows an interrupted run left
        are replaced, and written first, so a kill before the last row still leaves one missing
        and the user is redone. True when the run finished; a failure is recorded for each
        missing row (retried on re-run)."""
        before = {n: self._done(n, seed, user) for n in (*method.variants, method.name)}
        names = sorted(before, key=lambda n: not before[n])
        t0 = time.perf_counter()
        try:
            with metering(meter):
                out: Outcome = await method.run(user, seed, self.part)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one user is recorded, then retried on re-run
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, ToolrecError) and exc.hint:
                error += f" ({exc.hint})"
            trace = traceback.format_exc(limit=6)
            for name in (n for n in names if not before[n]):  # a variant has no answer without its method's run
                self.record(name, seed, user, final=[], rank=MISSING, error=error, trace=trace,
                            wall_s=time.perf_counter() - t0)
            return False
        wall = time.perf_counter() - t0
        _, target = self.ds.split(user, self.part)
        for name in names:
            answer = out if name == method.name else out.variants.get(name)
            if answer is None:
                continue
            rank = rank_in_list(answer.final, target)
            self.record(name, seed, user, final=answer.final[: self.top_n], rank=rank if rank < self.top_n else MISSING,
                        stats=answer.stats, trajectory=answer.trajectory, wall_s=wall - answer.saved_s,
                        replaces=before[name])
            self.tallies[name].live.catch_up(answer.stats, meter if name == method.name else UserMeter())
        return True

    async def read_servers(self, live: Live, slots: list[ServerSlots], mark: dict | None) -> None:
        """The figures the progress shows beside the users: users in flight and the limit now,
        and from the servers' /metrics (since `mark`, the method's start) the prefix-cache hit
        rate, KV use and token rates."""
        limits = [s.limit() for s in slots]
        live.limit = None if any(x is None for x in limits) else sum(limits)
        if self.watch is None:
            return
        try:
            await self.watch.read()
        except Exception:  # noqa: BLE001 - a figure for the display; never stops a run
            return
        if mark is not None:
            live.server = self.watch.since(mark)
        live.server_recent = self.watch.last_interval()
        live.kv_usage = self.watch.kv_usage()

    async def run(self, methods: list, plan: dict[int, list[int]]) -> dict[str, Tally]:
        for m in methods:
            if isinstance(m, ScoreMethod):
                self.run_scores(m, plan)
            elif isinstance(m, ListMethod):
                self.run_lists(m, plan)
            else:
                await self.run_llm(m, plan)
        return self.tallies


class LLMPass:
    """One LLM method's users in this invocation, scheduled: queued per server (`runner.route`),
    admitted while the server's slots fit them, each run and recorded by `Runner.run_user`.
    Every LLM call updates the live figures, and a ticker refreshes them with the servers'
    /metrics every `tick_s`, so the progress moves even while no user finishes. Too many
    failures in a row (the server died) stop the pass with one error, not a failed run of all."""

    def __init__(self, runner: Runner, method: LLMMethod, plan: dict[int, list[int]]):
        self.runner, self.method = runner, method
        todo = runner.todo(method.name, plan, also=method.variants)
        self.tally = runner._tally(method.name, plan)
        for v in method.variants:
            runner._tally(v, plan)
        self.slots = runner.slots or fixed_slots([""], runner.concurrency)
        self.queues: list[list[tuple[int, int]]] = [[] for _ in self.slots]
        for seed, user in todo:
            self.queues[runner.route(user) % len(self.slots)].append((seed, user))
        self.max_in_a_row = runner.max_failures_in_a_row or max(
            10, 2 * sum(s.limit() or runner.concurrency for s in self.slots))
        self.in_a_row = self.finished = 0
        self.stopped = False
        self.mark: dict | None = None

    def update(self) -> None:
        self.runner.on_update(self.method.name, self.tally)

    def on_call(self, meter: UserMeter, c, new_round: bool) -> None:
        live = self.tally.live
        live.calls += max(1, c.calls)
        live.rounds += new_round
        live.tokens_in += c.tokens_in
        live.tokens_out += c.tokens_out
        self.update()

    async def one(self, seed: int, user: int, slot: ServerSlots, meter: UserMeter) -> None:
        try:
            ok = await self.runner.run_user(self.method, seed, user, meter)
        finally:
            self.tally.live.in_flight -= 1
        await slot.release(meter, finished=ok)
        self.in_a_row = 0 if ok else self.in_a_row + 1
        self.finished += ok
        self.stopped = self.stopped or self.in_a_row >= self.max_in_a_row
        self.update()

    async def dispatch(self, slot: ServerSlots, queue: list[tuple[int, int]], group: asyncio.TaskGroup) -> None:
        for seed, user in queue:
            meter = UserMeter(on_call=self.on_call)
            await slot.admit(meter)
            if self.stopped:
                await slot.release(meter, finished=False)
                return
            self.tally.live.in_flight += 1
            group.create_task(self.one(seed, user, slot, meter))

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(self.runner.tick_s)
            await self.runner.read_servers(self.tally.live, self.slots, self.mark)
            self.update()

    async def run(self) -> Tally:
        await self.runner.read_servers(self.tally.live, self.slots, None)
        self.mark = self.runner.watch.mark() if self.runner.watch is not None else {}
        ticker = asyncio.create_task(self.tick())
        try:
            async with asyncio.TaskGroup() as group:
                for slot, queue in zip(self.slots, self.queues):
                    if queue:
                        group.create_task(self.dispatch(slot, queue, group))
        finally:
            ticker.cancel()
        await self.runner.read_servers(self.tally.live, self.slots, self.mark)
        self.update()
        if self.stopped:
            what = (f"the first {self.in_a_row} users all failed" if self.finished == 0 else
                    f"{self.in_a_row} users in a row failed after {self.finished} finished")
            raise ToolrecError(
                f"method {self.method.name}: {what}, stopped (last error: {self.tally.last_error})",
                "fix the cause (is the LLM server up? see --server), then re-run the same command: "
                "finished users are kept, failed ones are retried",
            )
        return self.tally
