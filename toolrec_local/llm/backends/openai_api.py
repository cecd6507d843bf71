"""The OpenAI API (or any server speaking its strict structured outputs) as a `Backend`.

Constraints become a strict `json_schema` response format (enums over attributes and
candidate options); the JSON answer is rendered back into the canonical text format, so the
agent sees the same text as from the other backends. Strict mode cannot say "distinct
items", so duplicates are dropped and the missing items asked for again (bounded).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import openai

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import grammar as G
from toolrec_local.llm.backends.retry import with_retries
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


class OpenAIBackend:
    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 120.0, connect_timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 1.0, name: str | None = None):
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ToolrecError("no OpenAI API key", "set OPENAI_API_KEY or pass --api-key")
        self.model = model
        self.name = name or f"openai:{model}"
        self.retries = retries
        self.backoff_s = backoff_s
        self._make_client = lambda: openai.AsyncOpenAI(
            api_key=key, base_url=base_url, max_retries=0, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self._clients: dict = {}  # event loop -> client: httpx pools connections per loop

    @property
    def _client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients.clear()  # clients of finished loops cannot be closed from this one
            self._clients[loop] = self._make_client()
        return self._clients[loop]

    async def generate(self, messages: list[Message], constraint: Constraint, *, max_tokens: int = 256,
                       temperature: float = 0.0, seed: int | None = None) -> Completion:
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
            resp = await self._call(lambda: self._client.chat.completions.create(**kwargs))
            if resp.usage:
                usage[0] += resp.usage.prompt_tokens
                usage[1] += resp.usage.completion_tokens
            usage[2] += 1
            msg = resp.choices[0].message
            if getattr(msg, "refusal", None):
                raise ToolrecError(f"{self.name} refused: {msg.refusal}", "rephrase the prompt or use another model")
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

    async def _call(self, make_request):
        retryable = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)
        try:
            return await with_retries(make_request, retries=self.retries, backoff_s=self.backoff_s, retryable=retryable)
        except retryable as exc:
            raise ToolrecError(f"{self.name}: the API failed {self.retries + 1} times: {exc}",
                               "check the network and base URL, then try again") from exc
        except openai.APIStatusError as exc:
            raise ToolrecError(f"{self.name}: the API rejected the request (HTTP {exc.status_code}): "
                               f"{str(exc)[:300]}",
                               "check the model name, the API key and the schema limits") from exc

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
