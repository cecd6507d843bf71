"""Implementations of `protocol.Backend`: vLLM server, local transformers, OpenAI API, scripted.

`VLLMBackend`, `LocalBackend` and `OpenAIBackend` are imported on first use (module
`__getattr__`), so importing this package does not load torch or openai; most callers go
through `toolrec_local.llm.factory.make_backend`.
"""

from toolrec_local.llm.backends.scripted import ScriptedBackend, ScriptedCall, ScriptError

_LAZY = {
    "VLLMBackend": "toolrec_local.llm.backends.vllm",
    "LocalBackend": "toolrec_local.llm.backends.local",
    "OpenAIBackend": "toolrec_local.llm.backends.openai_api",
}

__all__ = ["ScriptedBackend", "ScriptedCall", "ScriptError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
