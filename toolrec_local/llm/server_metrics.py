"""What a vLLM server says about itself at `/metrics` (Prometheus text format): the size of
its KV cache, how full it is, and how many prompt tokens it computed vs took from its prefix
cache. The eval runner sizes its concurrency from the first and reports the others.

Names as vLLM 0.32 exports them (vllm/v1/metrics/loggers.py); counters carry Prometheus'
`_total` suffix on the wire:

    vllm:cache_config_info{block_size="128",num_gpu_blocks="364",...} 1.0   (CPU blocks too)
    vllm:kv_cache_usage_perc            gauge, 0..1
    vllm:num_requests_running / _waiting
    vllm:prompt_tokens_total            every prompt token of every request
    vllm:prompt_tokens_cached_total     those the prefix cache served (not computed)
    vllm:generation_tokens_total
    vllm:num_preemptions_total          requests evicted from the KV cache and recomputed

A server without them (an OpenAI endpoint, vLLM behind a proxy that hides /metrics) reads
as None: callers fall back to what they were told.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_LINE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)], comments skipped, a counter's `_total` suffix removed
    (its `_created` timestamp dropped)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        if name.endswith("_created"):
            continue
        if name.endswith("_total"):
            name = name[: -len("_total")]
        try:
            v = float(value)
        except ValueError:
            continue
        out.setdefault(name, []).append((dict(_LABEL.findall(labels)), v))
    return out


@dataclass(frozen=True)
class ServerSnapshot:
    """One reading of a server's /metrics (counters are totals since it started)."""

    url: str
    block_size: int | None
    num_blocks: int | None
    kv_usage: float | None  # share of the KV cache's blocks in use, 0..1
    running: int
    waiting: int
    prompt_tokens: float
    cached_tokens: float
    generation_tokens: float
    preemptions: float
    taken_at: float  # time.monotonic()

    @property
    def capacity_tokens(self) -> int | None:
        """Tokens the KV cache holds (blocks x block size), None if the server does not say."""
        if not self.block_size or not self.num_blocks:
            return None
        return self.block_size * self.num_blocks


def snapshot_from_text(text: str, url: str = "") -> ServerSnapshot | None:
    """None unless the text has vLLM's metrics."""
    m = parse_prometheus(text)
    if not any(k.startswith("vllm:") for k in m):
        return None

    def total(name: str, *alternatives: str) -> float:
        for n in (name, *alternatives):
            if n in m:
                return sum(v for _, v in m[n])
        return 0.0

    block_size = num_blocks = None
    for labels, _ in m.get("vllm:cache_config_info", []):
        try:
            block_size = int(labels.get("block_size") or 0) or None
            num_blocks = (num_blocks or 0) + int(labels.get("num_gpu_blocks") or 0) or None
        except ValueError:
            pass
    usage = m.get("vllm:kv_cache_usage_perc") or m.get("vllm:gpu_cache_usage_perc")
    cached = total("vllm:prompt_tokens_cached")
    if "vllm:prompt_tokens_cached" not in m:  # older servers: the scheduler's prefix-cache hits
        cached = total("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
    return ServerSnapshot(
        url=url, block_size=block_size, num_blocks=num_blocks,
        kv_usage=max(v for _, v in usage) if usage else None,
        running=int(total("vllm:num_requests_running")), waiting=int(total("vllm:num_requests_waiting")),
        prompt_tokens=total("vllm:prompt_tokens"), cached_tokens=cached,
        generation_tokens=total("vllm:generation_tokens"), preemptions=total("vllm:num_preemptions"),
        taken_at=time.monotonic(),
    )


def metrics_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url + "/metrics"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def read_metrics(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> ServerSnapshot | None:
    """The server's /metrics now, or None (no such page, not vLLM, unreachable)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            r = await client.get(metrics_url(base_url), headers=_headers(api_key))
    except httpx.HTTPError:
        return None
    return snapshot_from_text(r.text, base_url) if r.status_code == 200 else None


def read_metrics_sync(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> ServerSnapshot | None:
    import httpx

    try:
        r = httpx.get(metrics_url(base_url), headers=_headers(api_key), timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return None
    return snapshot_from_text(r.text, base_url) if r.status_code == 200 else None


@dataclass(frozen=True)
class CacheUse:
    """What a server did between two snapshots (summed over servers by `combine`)."""

    prompt_tokens: float = 0.0
    cached_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    seconds: float = 0.0

    @property
    def computed_tokens(self) -> float:
        return self.prompt_tokens - self.cached_tokens

    @property
    def hit_rate(self) -> float | None:
        """Share of prompt tokens the prefix cache served."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens > 0 else None

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": int(self.prompt_tokens), "cached_tokens": int(self.cached_tokens),
            "computed_tokens": int(self.computed_tokens), "generation_tokens": int(self.generation_tokens),
            "prefix_cache_hit_rate": None if self.hit_rate is None else round(self.hit_rate, 4),
            "preemptions": int(self.preemptions),
        }


def cache_use(before: ServerSnapshot, after: ServerSnapshot) -> CacheUse:
    return CacheUse(
        prompt_tokens=max(0.0, after.prompt_tokens - before.prompt_tokens),
        cached_tokens=max(0.0, after.cached_tokens - before.cached_tokens),
        generation_tokens=max(0.0, after.generation_tokens - before.generation_tokens),
        preemptions=max(0.0, after.preemptions - before.preemptions),
        seconds=max(0.0, after.taken_at - before.taken_at),
    )


def combine(uses: list[CacheUse]) -> CacheUse:
    """Several servers over the same stretch of time."""
    return CacheUse(*(sum(getattr(u, f) for u in uses) for f in
                      ("prompt_tokens", "cached_tokens", "generation_tokens", "preemptions")),
                    seconds=max((u.seconds for u in uses), default=0.0))


class ServerWatch:
    """Reads the servers' /metrics now and then during a run: what they did since a mark,
    over the last interval, and how full their KV caches are."""

    def __init__(self, urls: list[str], api_key: str | None = None):
        self.urls = list(urls)
        self.api_key = api_key
        self.previous: dict[str, ServerSnapshot] = {}
        self.latest: dict[str, ServerSnapshot] = {}

    async def read(self) -> None:
        import asyncio

        snaps = await asyncio.gather(*(read_metrics(u, self.api_key) for u in self.urls))
        for url, snap in zip(self.urls, snaps):
            if snap is None:
                continue
            if url in self.latest:
                self.previous[url] = self.latest[url]
            self.latest[url] = snap

    def mark(self) -> dict[str, ServerSnapshot]:
        return dict(self.latest)

    def since(self, mark: dict[str, ServerSnapshot]) -> CacheUse | None:
        uses = [cache_use(mark[u], s) for u, s in self.latest.items() if u in mark]
        return combine(uses) if uses else None

    def last_interval(self) -> CacheUse | None:
        uses = [cache_use(self.previous[u], s) for u, s in self.latest.items() if u in self.previous]
        return combine(uses) if uses else None

    def kv_usage(self) -> float | None:
        usage = [s.kv_usage for s in self.latest.values() if s.kv_usage is not None]
        return max(usage) if usage else None
