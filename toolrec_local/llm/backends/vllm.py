"""A vLLM OpenAI-compatible server (one or several, round-robin) as a `Backend`.

Constraints travel as `structured_outputs: {"regex": ...}` in the request body; vLLM answers
HTTP 200 with unconstrained text to fields it does not know (the old `guided_regex`), so on
connect a probe asks for a random token under a regex and refuses to run unless it comes back.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import secrets
from dataclasses import dataclass

import httpx
import openai

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import grammar as G
from toolrec_local.llm.backends.retry import with_retries
from toolrec_local.llm.backends.stepwise import Step, StepwiseBackend, check_list_mode
from toolrec_local.llm.protocol import Message

# The server the current answer goes to: per asyncio task, so concurrent answers each keep
# all their steps on one server (whose prefix cache then holds the prompt).
_SERVER: contextvars.ContextVar["_Server | None"] = contextvars.ContextVar("vllm_server", default=None)

SERVE_HINT = "start one with `toolrec-local serve --llm <model>`, or pass the URL of a running one with --server"


def _model_length(entries: list[dict], model: str) -> int | None:
    """`max_model_len` of `model` in a /v1/models listing; None when the server does not say."""
    entry = next((m for m in entries if isinstance(m, dict) and m.get("id") == model), {})
    length = entry.get("max_model_len")
    return length if isinstance(length, int) else None


@dataclass
class _Server:
    url: str
    make_client: object  # () -> openai.AsyncOpenAI
    ready: bool = False
    max_model_len: int | None = None  # what /v1/models says it enforces (read on connect)
    _client: openai.AsyncOpenAI | None = None
    _loop: object = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        """One client per event loop: httpx pools connections per loop, and callers may use
        one backend from several `asyncio.run` calls."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = self.make_client(), loop
        return self._client


class VLLMBackend(StepwiseBackend):
    def __init__(self, base_urls: str | list[str], model: str, *, api_key: str | None = None,
                 timeout_s: float = 300.0, connect_timeout_s: float = 3.0, retries: int = 3,
                 backoff_s: float = 0.5, structured_backend: str | None = None,
                 name: str | None = None, list_mode: str = "optimistic", card_context: int | None = None):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ToolrecError("no vLLM server URL given", SERVE_HINT)
        self.model = model
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        # vLLM 0.32's CPU build kills its engine on a seeded request sampled at temperature > 0
        # ("RuntimeError: CPU Generator does not use offset" in _bookkeeping_sync), taking every
        # other user's request down with it. Per-request seeds are therefore opt-in
        # (TOOLREC_VLLM_SEEDS=1, safe on GPU builds); greedy decoding needs none.
        self.send_seeds = os.environ.get("TOOLREC_VLLM_SEEDS", "") == "1"
        self.structured_backend = structured_backend
        self.retries = retries
        self.backoff_s = backoff_s
        self.name = name or f"vllm:{model}"
        self._card_context = card_context  # what the model card starts the server with
        self.list_mode = check_list_mode(list_mode)
        timeout = openai.Timeout(timeout_s, connect=connect_timeout_s)  # the client's own type (openai >= 3.63 runs on httpx2)

        def client_for(url):
            return lambda: openai.AsyncOpenAI(base_url=url, api_key=api_key or "EMPTY",
                                              timeout=timeout, max_retries=0)

        self._servers = [_Server(u.rstrip("/"), client_for(u.rstrip("/"))) for u in urls]
        self._next = 0
        self._locks: dict = {}  # event loop -> asyncio.Lock for connect()

    @property
    def urls(self) -> list[str]:
        """The servers' base URLs (the eval runner reads their /metrics)."""
        return [s.url for s in self._servers]

    # --- connection and probe -----------------------------------------------------------

    async def connect(self) -> None:
        """Check every server: reachable, serves `model`, applies structured outputs."""
        lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            for server in self._servers:
                if not server.ready:
                    await self._check_model(server)
                    await self._probe(server)
                    server.ready = True

    async def _check_model(self, server: _Server) -> None:
        page = await self._call(server, lambda: server.client.models.list())
        served = [m.id for m in page.data]
        if server.max_model_len is None:  # served_context() may have read it already
            server.max_model_len = _model_length([m.model_dump() for m in page.data], self.model)
        if self.model not in served:
            raise ToolrecError(
                f"the vLLM server at {server.url} does not serve model {self.model!r}; it serves: "
                + (", ".join(served) or "nothing"),
                "pass the --llm that server serves, or point --server at a server of this model (toolrec-local serve --llm NAME)",
            )

    def context_tokens(self) -> int | None:
        """The context this backend serves: what the servers enforce (`served_context`), else
        the model card's `--max-model-len` (what `toolrec-local serve` starts them with)."""
        return self.served_context() or self._card_context

    def served_context(self) -> int | None:
        """The context the servers serve this model with: the smallest `max_model_len` their
        /v1/models report (it is what they enforce, whatever the card says). None when a server
        cannot be asked or does not say. Synchronous: asked when the agent's context is built,
        before any request; each server's reading is kept (connect() then uses it too)."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        for server in self._servers:
            if server.max_model_len is None:
                try:
                    resp = httpx.get(server.url + "/models", headers=headers, timeout=self._connect_timeout_s + 5)
                    resp.raise_for_status()
                    server.max_model_len = _model_length(resp.json().get("data", []), self.model)
                except (httpx.HTTPError, ValueError, AttributeError):
                    return None  # connect() will say what is wrong with the server
            if server.max_model_len is None:
                return None
        return min(s.max_model_len for s in self._servers)

    async def _probe(self, server: _Server) -> None:
        token = f"zq{secrets.token_hex(3)}-{secrets.token_hex(3)}"
        messages = [{"role": "user", "content": "Say hello in one short sentence."}]
        ctx = _SERVER.set(server)
        try:
            step = await self._step(messages, "", G.escape(token), max_tokens=len(token) + 4,
                                    temperature=1.0, seed=None)
        finally:
            _SERVER.reset(ctx)
        if step.text != token:
            raise ToolrecError(
                f"server ignores structured outputs: {server.url} was asked for {token!r} under a regex "
                f"and answered {step.text[:80]!r}",
                "use vLLM >= 0.10 with --structured-outputs-config.backend xgrammar|guidance|outlines; "
                "never run unconstrained by accident",
            )

    # --- requests -------------------------------------------------------------------------

    def _constraint_body(self, regex: str) -> dict:
        """The request fields that carry a regex (a subclass may change them; the probe checks)."""
        return {"structured_outputs": {"regex": regex}}

    async def generate(self, messages, constraint, *, max_tokens=256, temperature=0.0, seed=None, top_logprobs=0):
        await self.connect()
        server = self._servers[self._next % len(self._servers)]
        self._next += 1
        token = _SERVER.set(server)
        try:
            completion = await super().generate(messages, constraint, max_tokens=max_tokens,
                                                temperature=temperature, seed=seed, top_logprobs=top_logprobs)
        finally:
            _SERVER.reset(token)
        completion.meta["server"] = server.url
        return completion

    async def _step(self, messages: list[Message], prefix: str, regex: str | None, *,
                    max_tokens: int, temperature: float, seed: int | None, stop_when=None,
                    top_logprobs: int = 0) -> Step:
        server = _SERVER.get() or self._servers[0]
        extra: dict = {}
        msgs = list(messages)
        if prefix:
            msgs.append({"role": "assistant", "content": prefix})
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if regex is not None:
            extra.update(self._constraint_body(regex))
        if server.max_model_len:
            # vLLM refuses max_tokens above max_model_len (HTTP 400) but itself lowers it to
            # what the prompt leaves; a budget that generous (every byte a token, times k lines)
            # is only a bound, and a reply cut by the context comes back as finish "length".
            max_tokens = min(max_tokens, server.max_model_len)
        kwargs = dict(model=self.model, messages=msgs, max_tokens=max_tokens,
                      temperature=temperature, extra_body=extra)
        if seed is not None and temperature > 0 and self.send_seeds:
            kwargs["seed"] = seed
        if top_logprobs:
            # vLLM takes them after the structured-output mask (raw_logprobs: the model's own,
            # before temperature and penalties); the server needs --max-logprobs >= top_logprobs
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)
        if stop_when is not None:
            return await self._stream_step(server, kwargs, stop_when)
        resp = await self._call(server, lambda: server.client.chat.completions.create(**kwargs))
        choice = resp.choices[0]
        usage = resp.usage
        return Step(text=choice.message.content or "",
                    tokens_in=usage.prompt_tokens if usage else 0,
                    tokens_out=usage.completion_tokens if usage else 0,
                    stopped=choice.finish_reason != "length",
                    logprobs=_first_token_logprobs(choice) if top_logprobs else None)

    def label_token_counts(self, labels: tuple[str, ...]) -> dict[str, int]:
        """How many tokens each label is for the served model (vLLM's /tokenize, no special
        tokens): the `score` ranker's check (llm.labels.check_labels)."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        server = self._servers[0]
        root = server.url[: -len("/v1")] if server.url.endswith("/v1") else server.url
        counts = {}
        try:
            with httpx.Client(timeout=self._connect_timeout_s + 10, headers=headers) as client:
                for label in labels:
                    resp = client.post(root + "/tokenize", json={"model": self.model, "prompt": label,
                                                                 "add_special_tokens": False})
                    resp.raise_for_status()
                    counts[label] = len(resp.json()["tokens"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ToolrecError(f"cannot check the score ranker's labels with {root}/tokenize: {exc}",
                               SERVE_HINT) from exc
        return counts

    async def _stream_step(self, server: _Server, kwargs: dict, stop_when) -> Step:
        """Stream the answer and close the stream (vLLM then aborts the request) as soon as
        `stop_when(text so far)` holds; usage comes with every chunk (vLLM's
        continuous_usage_stats), so an aborted answer is still counted. A stream cut off midway
        (the server died) is retried from the start, like a request that failed."""
        kwargs["extra_body"]["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}

        async def read_stream() -> Step:
            stream = await server.client.chat.completions.create(stream=True, **kwargs)
            text, usage, finish = "", None, None
            try:
                async for chunk in stream:
                    usage = chunk.usage or usage
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                        if finish is None and stop_when(text):
                            break
            finally:
                await stream.close()
            return Step(text=text, tokens_in=usage.prompt_tokens if usage else 0,
                        tokens_out=usage.completion_tokens if usage else 0,
                        stopped=finish is not None and finish != "length")

        return await self._call(server, read_stream)

    async def _call(self, server: _Server, make_request):
        """Bounded retries with exponential backoff on connection errors and HTTP 5xx."""
        # httpx.TransportError: a stream cut off midway, should a client version not wrap it
        retryable = (openai.APIConnectionError, openai.InternalServerError, httpx.TransportError)
        try:
            return await with_retries(make_request, retries=self.retries, backoff_s=self.backoff_s, retryable=retryable)
        except (openai.APIConnectionError, httpx.TransportError) as exc:
            raise ToolrecError(f"cannot reach the vLLM server at {server.url}: {exc}", SERVE_HINT) from exc
        except openai.InternalServerError as exc:
            raise ToolrecError(
                f"the vLLM server at {server.url} failed {self.retries + 1} times: {_detail(exc)}",
                "see the server log; a regex that takes too long to compile also fails this way",
            ) from exc
        except openai.APIStatusError as exc:
            raise ToolrecError(
                f"the vLLM server at {server.url} rejected a request (HTTP {exc.status_code}): "
                f"{_detail(exc)}",
                "pass the key the server was started with (--api-key or TOOLREC_API_KEY)"
                if exc.status_code in (401, 403) else
                "check the model name, the context length (--max-model-len) and the request",
            ) from exc

    async def aclose(self) -> None:
        for server in self._servers:
            if server._client is not None and server._loop is asyncio.get_running_loop():
                await server._client.close()
            server._client = None


def _first_token_logprobs(choice) -> dict[str, float]:
    """The answer's first token's top log-probabilities (token text -> log-probability)."""
    content = getattr(choice.logprobs, "content", None) or []
    if not content:
        raise ToolrecError("the vLLM server returned no log-probabilities although they were asked",
                           "use a vLLM build that returns logprobs for chat completions")
    return {t.token: float(t.logprob) for t in content[0].top_logprobs}


def _detail(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(exc)[:300]
