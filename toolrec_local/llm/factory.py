"""`make_backend`: from a model card name and a backend kind to a ready `Backend`."""

from __future__ import annotations

import os
from pathlib import Path

from toolrec_local.errors import ToolrecError
from toolrec_local.llm.protocol import Backend
from toolrec_local.settings import BACKENDS
DEFAULT_VLLM_URL = "http://127.0.0.1:8000/v1"
STRUCTURED_BACKENDS = ("xgrammar", "guidance", "outlines")
# The one key variable of this project: `toolrec-local serve` makes vLLM require it, and the
# clients (agent, eval, doctor) send it to vLLM servers. The OpenAI API has its own.
API_KEY_ENV = "TOOLREC_API_KEY"


def api_key_for(backend: str, api_key: str | None = None) -> str | None:
    """`api_key` (the --api-key option) when given; else the variable of the service that
    `backend` talks to: OPENAI_API_KEY for the OpenAI API, TOOLREC_API_KEY for a vLLM server,
    so a vLLM key is never sent to OpenAI."""
    if api_key:
        return api_key
    return os.environ.get("OPENAI_API_KEY" if backend == "openai" else API_KEY_ENV) or None


def make_backend(llm: str, backend: str, base_url: str | list[str] | None = None, api_key: str | None = None,
                 model_path: str | Path | None = None, structured_backend: str | None = None) -> Backend:
    """`llm` names a model card (models/<llm>.yaml).

    * vllm:   the server(s) at `base_url` (one URL or a list, used round-robin) serving the card's
              `served_name`; checked and probed on the first call (or `await backend.connect()`).
              `structured_backend` only labels which server backend is expected; the server's
              `--structured-outputs-config.backend` decides.
    * local:  transformers + llguidance in this process, weights from `model_path` or the card
              (`structured_backend` None or "guidance").
    * openai: the OpenAI API (`base_url` for a compatible endpoint).

    `api_key` is the --api-key option; without it the key comes from the environment
    (`api_key_for`: TOOLREC_API_KEY for vllm, OPENAI_API_KEY for openai).
    """
    from toolrec_local.llm.registry import load_card

    if backend not in BACKENDS:
        raise ToolrecError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    card = load_card(llm)
    api_key = api_key_for(backend, api_key)
    if backend == "openai":
        if card.kind != "openai":
            raise ToolrecError(f"model {llm!r} is an open-weight model, not an OpenAI API model",
                               "use --backend vllm or --backend local for it")
        if isinstance(base_url, list):
            if len(base_url) != 1:
                raise ToolrecError("the openai backend takes one base URL", "pass a single --server URL")
            base_url = base_url[0]
        from toolrec_local.llm.backends.openai_api import OpenAIBackend

        return OpenAIBackend(card.served_name, api_key=api_key, base_url=base_url, context=card.context_for(backend))
    if card.kind != "open-weight":
        raise ToolrecError(f"model {llm!r} is an API model; it cannot run on the {backend} backend",
                           "use --backend openai for it")
    if structured_backend is not None and structured_backend not in STRUCTURED_BACKENDS:
        raise ToolrecError(f"unknown structured-output backend {structured_backend!r}",
                           f"use one of: {', '.join(STRUCTURED_BACKENDS)}")
    if backend == "vllm":
        from toolrec_local.llm.backends.vllm import VLLMBackend

        return VLLMBackend(base_url or DEFAULT_VLLM_URL, card.served_name, api_key=api_key,
                           structured_backend=structured_backend, name=f"vllm:{card.name}",
                           card_context=card.context_for(backend))
    if structured_backend not in (None, "guidance"):
        raise ToolrecError(f"the local backend constrains with llguidance, not {structured_backend!r}",
                           "drop --structured-backend (or pass guidance) with --backend local")
    from toolrec_local.llm.backends.local import LocalBackend

    return LocalBackend(card.require_weights(Path(model_path) if model_path else None), name=f"local:{card.name}",
                        context=card.context_for(backend))
