"""The OpenAI API (or any server speaking its strict structured outputs) as a `Backend`.

Constraints become a strict `json_schema` response format (enums over attributes and
candidate options); the JSON answer is rendered back into the canonical text format, so the
agent sees the same text as from the other backends. Strict mode cannot say "distinct
items", so duplicates are dropped and the missing items asked for again (bounded).

Retries are the OpenAI client's own (`max_retries`): jittered exponential backoff on
connection errors, 408/409/429 and 5xx, waiting what a `Retry-After` header asks. An exhausted
quota (`insufficient_quota`, sent as HTTP 429) cannot succeed on a retry, so it ends the run at
once; a reply cut at `max_completion_tokens` is reported as truncated, not as a schema breach.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import openai

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import grammar as G
from toolrec_local.llm.protocol import (
    ActionGrammar, ChoiceGrammar, Completion, Constraint, ItemListGrammar, Message,
)

_NAMES = {ActionGrammar: "agent_turn", ItemListGrammar: "item_list", ChoiceGrammar: "choice"}
LIST_REPAIRS = 3
# OpenAI's documented strict-mode limit: above 250 enum values, their total length <= 15,000 chars.
ENUM_LIMIT_VALUES, ENUM_LIMIT_CHARS = 250, 15_000


def check_enum_size(c: Constraint) -> None:
    options = getattr(c, "options", ())
    if len(options) > ENUM_LIMIT_VALUES and sum(map(len, options)) > ENUM_LIMIT_CHARS:
        raise ToolrecError(
            f"{len(options)} candidates ({sum(map(len, options))} characters) exceed the OpenAI strict "
            f"schema limit ({ENUM_LIMIT_CHARS} characters of enum values above {ENUM_LIMIT_VALUES} values)",
            "rank fewer candidates (a smaller retrieval K), or use item ids instead of titles")


def _quota_exhausted(response) -> bool:
    """An HTTP error whose body says `insufficient_quota` (OpenAI sends it as a 429)."""
    try:
        error = response.json().get("error")
    except Exception:  # noqa: BLE001 - a body that is not JSON is not a quota error
        return False
    return isinstance(error, dict) and "insufficient_quota" in (error.get("code"), error.get("type"))


class _Client(openai.AsyncOpenAI):
    """The SDK client, with its retry machinery, told two things it cannot know: a quota error
    is final, and (for tests and impatient users) the first backoff step may differ from 0.5 s."""

    first_wait_s: float | None = None

    def _should_retry(self, response) -> bool:
        return not _quota_exhausted(response) and super()._should_retry(response)

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None):
        wait = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        if self.first_wait_s is None or wait == self._parse_retry_after_header(response_headers):
            return wait  # the SDK's own backoff, or the server's Retry-After
        return wait * self.first_wait_s / 0.5  # 0.5 s: the SDK's first backoff step


class OpenAIBackend:
    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 120.0, connect_timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float | None = None, name: str | None = None, context: int | None = None):
        """`api_key`: --api-key, else OPENAI_API_KEY (never the vLLM servers' TOOLREC_API_KEY).
        `retries`: the client's max_retries. `backoff_s`: the first backoff step (default: the
        client's, 0.5 s, doubling up to 8 s, jittered)."""
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise ToolrecError("no OpenAI API key", "set OPENAI_API_KEY or pass --api-key")
        self.model = model
        self.name = name or f"openai:{model}"
        self._context = context  # the model card's context_length
        self.retries = retries

        def make_client():
            client = _Client(api_key=api_key, base_url=base_url, max_retries=retries,
                             timeout=openai.Timeout(timeout_s, connect=connect_timeout_s))
            client.first_wait_s = backoff_s
            return client

        self._make_client = make_client
        self._clients: dict = {}  # event loop -> client: httpx pools connections per loop

    @property
    def _client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients.clear()  # clients of finished loops cannot be closed from this one
            self._clients[loop] = self._make_client()
        return self._clients[loop]

    def context_tokens(self) -> int | None:
        return self._context

    def label_token_counts(self, labels: tuple[str, ...]) -> dict[str, int]:
        """The `score` ranker needs the log-probabilities after a choice constraint's mask, for
        every label: the API caps top_logprobs at 20 and does not say how its strict schemas
        mask them."""
        raise ToolrecError("--rank-by score needs log-probabilities under a choice constraint, which the OpenAI "
                           "backend does not give", "use --rank-by generate, or --backend vllm or local")

    async def generate(self, messages: list[Message], constraint: Constraint, *, max_tokens: int = 256,
                       temperature: float = 0.0, seed: int | None = None, top_logprobs: int = 0) -> Completion:
        t0 = time.perf_counter()
        usage = [0, 0, 0]  # tokens in, tokens out, calls

        async def ask(msgs, c):
            kwargs = dict(model=self.model, messages=msgs, max_completion_tokens=max_tokens,
                          temperature=temperature)
            if seed is not None:
                kwargs["seed"] = seed
            if c is not None:
                check_enum_size(c)
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": _NAMES[type(c)], "strict": True, "schema": G.to_json_schema(c)}}
            resp = await self._call(self._client.chat.completions.create(**kwargs))
            if resp.usage:
                usage[0] += resp.usage.prompt_tokens
                usage[1] += resp.usage.completion_tokens
            usage[2] += 1
            choice = resp.choices[0]
            msg = choice.message
            if getattr(msg, "refusal", None):
                raise ToolrecError(f"{self.name} refused: {msg.refusal}", "rephrase the prompt or use another model")
            if c is not None and choice.finish_reason == "length":
                raise ToolrecError(
                    f"{self.name}: the reply was truncated at max_completion_tokens={max_tokens} "
                    f"(finish_reason 'length'), so its JSON is incomplete: {(msg.content or '')[-120:]!r}",
                    "allow more tokens for this step (e.g. a larger action or list budget), or ask for fewer items")
            return msg.content or ""

        if constraint is None:
            text = await ask(messages, None)
        elif isinstance(constraint, ItemListGrammar):
            text = await self._item_list(messages, constraint, ask)
        else:
            text = self._render(constraint, await ask(messages, constraint))
        return Completion(text=text, tokens_in=usage[0], tokens_out=usage[1],
                          latency_s=time.perf_counter() - t0, calls=usage[2])

    async def _item_list(self, messages, g: ItemListGrammar, ask) -> str:
        chosen: list[str] = []
        msgs = list(messages)
        for _ in range(LIST_REPAIRS + 1):
            remaining = tuple(o for o in dict.fromkeys(g.options) if o not in chosen)
            need = ItemListGrammar(remaining, g.k - len(chosen))
            raw = await ask(msgs, need)
            chosen += self._render(need, raw).split("\n")
            if len(chosen) == g.k:
                return "\n".join(chosen)
            msgs = msgs + [{"role": "assistant", "content": raw},
                           {"role": "user", "content": f"Those repeat items. Give {g.k - len(chosen)} more, "
                                                       f"none of: {json.dumps(chosen)}"}]
        raise ToolrecError(f"{self.name} kept repeating items: {len(chosen)} distinct of {g.k}",
                           "ask for fewer items or use a stronger model")

    def _render(self, c: Constraint, raw: str) -> str:
        try:
            return G.render_json(c, raw)
        except (ValueError, KeyError, TypeError) as exc:  # JSON outside the strict schema
            raise ToolrecError(f"{self.name} answered outside the requested schema ({exc}): {raw[:200]!r}",
                               "the endpoint does not enforce strict json_schema outputs; use a model that does") from exc

    async def _call(self, request):
        """Await one request (the client retries it) and turn what is left into ToolrecErrors."""
        try:
            return await request
        except openai.RateLimitError as exc:
            if "insufficient_quota" in (exc.code, exc.type):
                raise ToolrecError(f"{self.name}: the API key's quota is exhausted (insufficient_quota): {str(exc)[:200]}",
                                   "add credit or raise the limit of this key's OpenAI project, or use another key "
                                   "(--api-key or OPENAI_API_KEY)") from exc
            raise ToolrecError(f"{self.name}: still rate limited after {self.retries} retries: {str(exc)[:200]}",
                               "lower the eval concurrency (--concurrency) or wait, then resume the run") from exc
        except (openai.APIConnectionError, openai.InternalServerError) as exc:
            raise ToolrecError(f"{self.name}: the API failed {self.retries + 1} times: {str(exc)[:200]}",
                               "check the network and base URL, then try again") from exc
        except openai.APIStatusError as exc:
            raise ToolrecError(f"{self.name}: the API rejected the request (HTTP {exc.status_code}): "
                               f"{str(exc)[:300]}",
                               "check the model name, the API key and the schema limits") from exc

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
