"""Capacity-aware concurrency and live progress, without vLLM: fake servers that serve a
/metrics page (a KV cache of a chosen size), and LLM methods that report their calls through
the meter the way AgentContext.ask does."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from rich.console import Console

from fixtures_eval import prepare_walk, rule_loader
from toolrec_local.eval.methods import LLMMethod, Outcome
from toolrec_local.eval.session import EvalOptions, evaluate
from toolrec_local.llm.meter import note_call
from toolrec_local.llm.protocol import ActionGrammar, Completion
from toolrec_local.llm.server_metrics import cache_use, snapshot_from_text

# As vLLM 0.32 writes it (counters with _total and _created), trimmed to what is read.
METRICS = """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="%(block)d",cache_dtype="auto",enable_prefix_caching="True",engine="0",num_gpu_blocks="%(blocks)d"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-135m"} 0.25
vllm:num_requests_running{engine="0",model_name="smollm2-135m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="smollm2-135m"} 1.0
vllm:prompt_tokens_total{engine="0",model_name="smollm2-135m"} %(prompt)d.0
vllm:prompt_tokens_created{engine="0",model_name="smollm2-135m"} 1.764e+09
vllm:prompt_tokens_cached_total{engine="0",model_name="smollm2-135m"} %(cached)d.0
vllm:generation_tokens_total{engine="0",model_name="smollm2-135m"} 500.0
vllm:num_preemptions_total{engine="0",model_name="smollm2-135m"} 0.0
"""


class FakeServer:
    """127.0.0.1 HTTP server whose /metrics reports a KV cache of `blocks` x `block` tokens
    (404 when blocks is None, like a server without metrics), and 100 more prompt tokens at
    each reading, 90 of them cached."""

    def __init__(self, blocks: int | None, block: int = 64):
        self.values = {"block": block, "blocks": blocks, "prompt": 1000, "cached": 900}
        values = self.values

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics" or values["blocks"] is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                values["prompt"] += 100
                values["cached"] += 90
                body = (METRICS % values).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class MeteredSuite:
    """One LLM method over fake backends (users routed by id modulo the backends); each user
    makes `calls` calls of `prompt` tokens with a `reply` budget, reported to the meter.
    Records the peak of users in flight per backend, and calls `on_call` after each call."""

    def __init__(self, ds, urls, *, calls=3, prompt=200, reply=50, delay=0.02, on_call=None):
        self.ds = ds
        self.backends = [SimpleNamespace(urls=[u], name="fake") for u in urls]
        self.calls, self.prompt, self.reply, self.delay = calls, prompt, reply, delay
        self.on_call = on_call or (lambda: None)
        self.in_flight = [0] * len(urls)
        self.peak = [0] * len(urls)
        self.methods = {"toolrec": LLMMethod("toolrec", self._run)}

    def backend_of(self, user: int) -> int:
        return user % len(self.backends)

    async def _run(self, user, seed, part):
        b = self.backend_of(user)
        self.in_flight[b] += 1
        self.peak[b] = max(self.peak[b], self.in_flight[b])
        try:
            for _ in range(self.calls):
                await asyncio.sleep(self.delay)
                note_call(Completion("Thought: x\nAction: Finish", tokens_in=self.prompt, tokens_out=7),
                          self.reply, ActionGrammar(("genre",)))
                self.on_call()
        finally:
            self.in_flight[b] -= 1
        stats = {"llm_calls": self.calls, "tokens_in": self.prompt * self.calls, "tokens_out": 7 * self.calls,
                 "rounds": self.calls}
        return Outcome(final=list(range(1, 11)), stats=stats, trajectory={"user": self.ds.user_ids[user]})

    async def aclose(self):
        pass


@pytest.fixture
def walk(tmp_home):
    return prepare_walk(tmp_home)


def run(tmp_path, suite, notes=None, **kw):
    opts = EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", seeds=1, out=tmp_path / "run", **kw)
    return evaluate(opts, tool_loader=rule_loader, llm_factory=lambda names, ds, tools, **_: suite,
                    on_note=(notes.append if notes is not None else None))


def test_a_server_with_a_small_kv_cache_gets_fewer_users_in_flight(walk, tmp_path):
    small, big = FakeServer(blocks=16), FakeServer(blocks=4096)  # 1,024 vs 262,144 tokens
    try:
        suite = MeteredSuite(walk, [small.url, big.url])
        notes = []
        summary, _ = run(tmp_path, suite, notes, users=40)
    finally:
        small.close()
        big.close()
    # small: one user at a time until 3 finished (each counted at the 4,096-token context),
    # then users of 250 tokens (200 prompt + 50 reply) while they fit 90% of 1,024: three
    assert suite.peak[0] == 3
    assert suite.peak[1] >= 10  # all ~20 of its users fit the big cache
    assert any("1,024 tokens" in n for n in notes) and any("262,144 tokens" in n for n in notes)
    assert summary["methods"]["toolrec"]["users"]["ok"] == 40
    # what the /metrics counters said over the run goes into the summary
    server = summary["llm_server"]["toolrec"]
    assert server["prompt_tokens"] > 0 and server["prefix_cache_hit_rate"] == 0.9


def test_a_number_caps_auto_and_a_server_without_metrics_gets_the_fallback(walk, tmp_path):
    big, bare = FakeServer(blocks=4096), FakeServer(blocks=None)
    try:
        capped = MeteredSuite(walk, [big.url])
        run(tmp_path / "a", capped, users=20, concurrency=2)
        notes = []
        fallback = MeteredSuite(walk, [bare.url], calls=1)
        run(tmp_path / "b", fallback, notes, users=40)
    finally:
        big.close()
        bare.close()
    assert capped.peak == [2]
    from toolrec_local.eval.capacity import FALLBACK_USERS

    assert fallback.peak == [FALLBACK_USERS]
    assert any("does not report its KV cache" in n and "--concurrency N" in n for n in notes)


def test_a_rank_server_of_its_own_caps_the_users_of_the_main_servers(walk, tmp_path):
    # main: 262,144 tokens (dozens of users); --rank-llm server: 64 blocks x 64 = 4,096 tokens
    # at a 1,024-token context -> int(0.9 * 4096 // 1024) = 3 users, shared by two main servers
    main_a, main_b, rank = FakeServer(blocks=4096), FakeServer(blocks=4096), FakeServer(blocks=64)
    try:
        suite = MeteredSuite(walk, [main_a.url, main_b.url])
        suite.rank_backend = SimpleNamespace(urls=[rank.url], name="ranker", context_tokens=lambda: 1024)
        notes = []
        summary, _ = run(tmp_path, suite, notes, users=30)
    finally:
        for s in (main_a, main_b, rank):
            s.close()
    assert suite.peak == [1, 1]  # 3 // 2 servers
    assert any(n.startswith("--rank-llm") and "4,096 tokens" in n and "so 1 users in flight per main server (2 of them)" in n for n in notes)
    assert summary["methods"]["toolrec"]["users"]["ok"] == 30


def test_progress_lines_appear_while_users_are_in_flight(walk, tmp_path, monkeypatch):
    """Plain (non-terminal) progress: lines come while no user has finished, from each LLM
    call and from the runner's ticker when no call finishes either."""
    from toolrec_local.eval import runner as runner_mod
    from toolrec_local.eval.progress import EvalProgress

    monkeypatch.setattr(runner_mod, "TICK_S", 0.05)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    server = FakeServer(blocks=4096)
    seen_before_first_user = []

    def on_call():
        seen_before_first_user.append(out.getvalue())

    try:
        suite = MeteredSuite(walk, [server.url], calls=2, delay=0.6, on_call=on_call)
        with EvalProgress(console, log_every_s=0.1) as progress:
            opts = EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", seeds=1, users=2, out=tmp_path / "run")
            evaluate(opts, tool_loader=rule_loader, llm_factory=lambda *a, **k: suite, on_update=progress.update)
    finally:
        server.close()
    first_call = seen_before_first_user[0].splitlines()
    # before any call returned (0.6 s), the ticker's lines: users in flight, the server's cache figures
    waiting = [line for line in first_call if line.startswith("toolrec: 0/2 users")]
    assert len(waiting) >= 3 and all(re.search(r"  2/\d+ in flight", line) for line in waiting[1:])
    assert "cache 90%" in waiting[-1] and "KV 25%" in waiting[-1]
    # after the first calls, still no user done: the calls are counted
    mid = seen_before_first_user[2].splitlines()
    assert any(line.startswith("toolrec: 0/2 users") and "2 rounds 2 calls" in line for line in mid)
    assert out.getvalue().splitlines()[-1].startswith("toolrec: 2/2 users")


def test_metrics_text_is_read_as_vllm_writes_it():
    before = snapshot_from_text(METRICS % {"block": 128, "blocks": 364, "prompt": 1000, "cached": 800})
    after = snapshot_from_text(METRICS % {"block": 128, "blocks": 364, "prompt": 3000, "cached": 2700})
    assert before.capacity_tokens == 46592 and before.kv_usage == 0.25
    assert (before.running, before.waiting, before.generation_tokens) == (3, 1, 500.0)
    use = cache_use(before, after)
    assert (use.prompt_tokens, use.cached_tokens, use.computed_tokens) == (2000, 1900, 100)
    assert use.hit_rate == pytest.approx(0.95)
    assert snapshot_from_text("# just a comment\nprocess_cpu_seconds_total 3.0\n") is None


def test_the_expected_peak_starts_at_the_context_and_learns_from_finished_and_running_users():
    from toolrec_local.eval.capacity import ServerSlots
    from toolrec_local.llm.meter import UserMeter

    async def scenario():
        s = ServerSlots("http://x/v1", capacity_tokens=10_000, context_tokens=4_000)  # plans for 9,000
        a, b = UserMeter(), UserMeter()
        await s.admit(a)
        await s.admit(b)  # 2 x 4,000 fit; a third would not
        assert not s.has_room() and s.limit() == 2
        for _ in range(3):  # three short conversations finish first
            short = UserMeter(footprint=500)
            s.users.append(short)
            await s.release(short, finished=True)
        a.footprint = 3_000  # a long one still running
        assert s.expected_peak() == 3_000 and s.limit() == 3
        await s.release(a, finished=True)
        await s.release(b, finished=False)  # a failed user teaches nothing
        assert s.peaks == [500, 500, 500, 3_000] and s.expected_peak() == 3_000
        s.peaks = [500] * 9 + [3_000]
        assert s.expected_peak() == 3_000  # the 90% quantile of ten is the largest
        s.peaks.append(500)
        assert s.expected_peak() == 500 and s.limit() == 18

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.vllm
def test_a_real_vllm_server_reports_its_kv_cache(vllm_server):
    """The metric names read here are the ones vLLM 0.32 exports: the capacity in /metrics is
    the one its log announces, and a request shows up in the prompt-token counters."""
    import re as _re

    import httpx

    from toolrec_local.eval.capacity import plan_slots
    from toolrec_local.llm.server_metrics import read_metrics_sync

    before = read_metrics_sync(vllm_server.base_url)
    logged = _re.findall(r"KV cache size: ([\d,]+) tokens", vllm_server.log_path.read_text(errors="replace"))
    assert before is not None and logged and before.capacity_tokens == int(logged[-1].replace(",", ""))
    body = {"model": vllm_server.model, "messages": [{"role": "user", "content": "hello " * 40}], "max_tokens": 2}
    for _ in range(2):  # the second time the prompt's full blocks come from the prefix cache
        httpx.post(vllm_server.base_url + "/chat/completions", json=body, timeout=120, trust_env=False).raise_for_status()
    after = read_metrics_sync(vllm_server.base_url)
    assert after.prompt_tokens - before.prompt_tokens >= 80 and after.cached_tokens > before.cached_tokens
    slots, notes = asyncio.run(plan_slots([vllm_server.base_url], None, context_tokens=2048))
    assert slots[0].capacity_tokens == before.capacity_tokens and f"{before.capacity_tokens:,} tokens" in notes[0]


def test_concurrency_option_is_auto_or_a_positive_number():
    from toolrec_local.errors import ToolrecError
    from toolrec_local.eval.commands import parse_concurrency

    assert parse_concurrency("auto") is None and parse_concurrency("AUTO") is None and parse_concurrency("8") == 8
    for bad in ("0", "-3", "many"):
        with pytest.raises(ToolrecError, match="--concurrency"):
            parse_concurrency(bad)
