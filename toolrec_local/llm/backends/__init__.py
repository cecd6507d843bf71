"""Implementations of `protocol.Backend`: vLLM server, local transformers, OpenAI API, scripted.

Imported lazily (`from toolrec_local.llm.backends.vllm import VLLMBackend`, or through
`toolrec_local.llm.factory.make_backend`), so that importing one does not load torch or openai
for the others.
"""

from toolrec_local.llm.backends.scripted import ScriptedBackend, ScriptedCall, ScriptError

__all__ = ["ScriptedBackend", "ScriptedCall", "ScriptError"]
