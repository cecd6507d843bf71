"""How many users the runner keeps in flight on each LLM server (`--concurrency auto`).

A user in flight keeps its conversation in the server's KV cache between rounds: vLLM's
prefix cache holds the blocks of finished requests until it needs the room. When the
conversations in flight outgrow the cache, every new round evicts another user's prefix,
which then has to be computed again: on a prefill-bound CPU that is most of the work, and on
a GPU running requests are preempted and recomputed. So each server admits a new user only
while the users it runs, each counted at its expected peak, fit in `fill` of its cache
(vLLM's /metrics says how big the cache is: block size x number of blocks).

A user's footprint is the largest prompt + reply budget of one of its requests (the meter
reports it after each call). The expected peak of a user is the server's context length
until a few users have finished, then a high quantile of the finished users' footprints (or
the largest footprint in flight, if larger), so the limit starts safe and grows to what the
workload needs. A number given to --concurrency
caps the users per server on top. A server without /metrics (the OpenAI API, a proxy) gets a
fixed number of users; the local backend runs one at a time. A --rank-llm server of its own
caps the users of all the main servers together by its cache. Several processes on one server
(--shard on one node) each plan for the whole cache: give each a number.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from toolrec_local.llm.meter import UserMeter

FILL = 0.9  # share of the KV cache the users in flight may plan to hold
LEARN_AFTER = 3  # finished users before their footprints replace the context length
QUANTILE = 0.9
FALLBACK_USERS = 16  # --concurrency auto where the server does not report its KV cache


@dataclass
class ServerSlots:
    """The users in flight on one server."""

    url: str
    capacity_tokens: int | None = None  # None: unknown, only max_users limits
    max_users: int | None = None
    context_tokens: int = 4096
    fill: float = FILL
    users: list[UserMeter] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)  # footprints of the users that finished
    most_in_flight: int = 0
    _changed: asyncio.Condition | None = None

    def expected_peak(self) -> int:
        """What a user is expected to hold at its peak. The first users to finish are the ones
        with short conversations, so the users still in flight (already that big) count too."""
        if len(self.peaks) < LEARN_AFTER:
            return self.context_tokens
        ranked = sorted(self.peaks)
        finished = ranked[min(len(ranked) - 1, int(QUANTILE * len(ranked)))]
        return max(1, finished, max((m.footprint for m in self.users), default=0))

    def planned_tokens(self) -> int:
        """KV tokens the users in flight are expected to hold at their peaks."""
        expected = self.expected_peak()
        return sum(max(m.footprint, expected) for m in self.users)

    def has_room(self) -> bool:
        if not self.users:
            return True  # one user always runs, however small the cache
        if self.max_users is not None and len(self.users) >= self.max_users:
            return False
        if self.capacity_tokens is None:
            return True
        return self.planned_tokens() + self.expected_peak() <= self.fill * self.capacity_tokens

    def limit(self) -> int | None:
        """Users this server runs at once with the footprints learnt so far (for display)."""
        by_cache = None
        if self.capacity_tokens is not None:
            by_cache = max(1, int(self.fill * self.capacity_tokens // self.expected_peak()))
        caps = [c for c in (by_cache, self.max_users) if c is not None]
        return min(caps) if caps else None

    async def admit(self, meter: UserMeter) -> None:
        """Wait until the user fits, then count it in flight."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(self.has_room)
            self.users.append(meter)
            self.most_in_flight = max(self.most_in_flight, len(self.users))

    async def release(self, meter: UserMeter, finished: bool) -> None:
        """The user is done; a finished user's footprint teaches the expected peak."""
        assert self._changed is not None
        async with self._changed:
            self.users.remove(meter)
            if finished and meter.footprint:
                self.peaks.append(meter.footprint)
            self._changed.notify_all()

    def describe(self) -> str:
        parts = [self.url or "server"]
        if self.capacity_tokens is not None:
            parts.append(f"KV cache {self.capacity_tokens:,} tokens")
        limit = self.limit()
        parts.append(f"up to {limit} users at once" if limit is not None else "no limit")
        if self.capacity_tokens is not None and len(self.peaks) < LEARN_AFTER:
            parts.append(f"(until users finish, each counted at the full context of {self.context_tokens:,} tokens)")
        return " ".join(parts)


def fixed_slots(urls: list[str], users: int) -> list[ServerSlots]:
    return [ServerSlots(url, max_users=max(1, users)) for url in (urls or [""])]


async def plan_slots(urls: list[str], concurrency: int | None, *, context_tokens: int | None,
                     api_key: str | None = None) -> tuple[list[ServerSlots], list[str]]:
    """One ServerSlots per server URL (in the order users are routed to them) and notes for
    the user. `concurrency` None is auto: each server's KV cache decides; a number caps the
    users per server."""
    from toolrec_local.llm.server_metrics import read_metrics

    snaps = await asyncio.gather(*(read_metrics(u, api_key) for u in urls))
    slots, notes = [], []
    for url, snap in zip(urls, snaps):
        capacity = snap.capacity_tokens if snap is not None else None
        if capacity is None and concurrency is None:
            slots.append(ServerSlots(url, max_users=FALLBACK_USERS))
            notes.append(f"concurrency auto: {url} does not report its KV cache (/metrics); running "
                         f"{FALLBACK_USERS} users at once (set a number with --concurrency N)")
            continue
        s = ServerSlots(url, capacity_tokens=capacity, max_users=concurrency,
                        context_tokens=max(1, context_tokens or 4096))
        slots.append(s)
        notes.append(f"concurrency {'auto' if concurrency is None else f'at most {concurrency}'}: {s.describe()}")
    return slots, notes


@dataclass
class Plan:
    slots: list[ServerSlots]
    route: object  # (internal user id) -> index into slots
    watch: object | None  # ServerWatch over the servers that have /metrics
    notes: list[str]


async def plan_for_suite(suite, concurrency: int | None, api_key: str | None = None) -> Plan:
    """Slots for the LLM methods of `suite`: one per backend (users stick to a backend by
    `suite.backend_of`), sized from each vLLM server's /metrics; other backends (OpenAI, the
    scripted ones of the tests) get `concurrency` users, or FALLBACK_USERS under auto."""
    from toolrec_local.llm.protocol import context_tokens
    from toolrec_local.llm.server_metrics import ServerWatch

    backends = list(getattr(suite, "backends", None) or [])
    route = getattr(suite, "backend_of", None) or (lambda user: 0)
    urls = [list(getattr(b, "urls", None) or []) for b in backends]
    if not any(urls):
        users = FALLBACK_USERS if concurrency is None else concurrency
        notes = [] if concurrency is not None else [
            f"concurrency auto: this backend does not report a KV cache; running {users} users at once "
            "(set a number with --concurrency N)"]
        return Plan(fixed_slots([""], users), lambda user: 0, None, notes)
    slots, notes = [], []
    for backend, those in zip(backends, urls):
        got, said = await plan_slots(those[:1], concurrency, context_tokens=context_tokens(backend), api_key=api_key)
        slots += got
        notes += said
    notes += await _cap_by_rank_server(slots, getattr(suite, "rank_backend", None), concurrency, api_key)
    watch = ServerWatch([u[0] for u in urls if u], api_key)
    return Plan(slots, route, watch, notes)


async def _cap_by_rank_server(slots: list[ServerSlots], rank, concurrency: int | None,
                              api_key: str | None) -> list[str]:
    """--rank-llm on a server of its own: every user in flight may send it a ranking prompt at
    once, so the users of all the main servers together must fit its cache too. Its ranking
    prompts are single requests (no conversation), counted at its full context; the cap is
    shared evenly by the main servers."""
    from toolrec_local.llm.protocol import context_tokens

    rank_urls = list(getattr(rank, "urls", None) or [])
    if not rank_urls:
        return []
    got, said = await plan_slots(rank_urls[:1], concurrency, context_tokens=context_tokens(rank), api_key=api_key)
    share = max(1, got[0].limit() // max(1, len(slots)))  # plan_slots always bounds a slot (cache, number or fallback)
    for s in slots:
        s.max_users = share if s.max_users is None else min(s.max_users, share)
    return [f"--rank-llm {said[0]}; so {share} users in flight per main server ({len(slots)} of them)"]
