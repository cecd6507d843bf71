"""transformers + llguidance in process, as a `Backend` (CPU; tests and small models).

The model loads once per process. Each step is a plain decoding loop: llguidance computes the
allowed-token mask from the regex over the tokenizer's bytes (so titles with non-ASCII letters
and titles that extend other titles stay reachable, unlike Outlines' own regex backend here),
and the KV cache of the longest shared prompt prefix is reused between steps, so the k steps of
an item list re-read only their new tokens. Calls are serialised: one model, one thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolrec_local.errors import ToolrecError
from toolrec_local.llm.backends.stepwise import Step, StepwiseBackend, check_list_mode
from toolrec_local.llm.protocol import Message


@dataclass
class _Loaded:
    model: object
    tokenizer: object
    lltok: object
    vocab: int
    eos_ids: set[int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    cache_ids: list[int] = field(default_factory=list)  # tokens whose KV sits in `cache`
    cache: object = None


_MODELS: dict[str, _Loaded] = {}
_LOAD_LOCK = threading.Lock()


def load(model_path: str | Path, dtype: torch.dtype = torch.float32) -> _Loaded:
    """The model at `model_path`, loaded once per process."""
    path = Path(model_path).expanduser().resolve()
    key = str(path)
    with _LOAD_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if not (path / "config.json").is_file():
            raise ToolrecError(f"no model at {path} (config.json missing)",
                               "pull it with `toolrec-local models pull <name>` or pass --model-path")
        import llguidance.hf
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.chat_template is None:
            raise ToolrecError(f"the tokenizer at {path} has no chat template",
                               "use an instruction model or add chat_template.jinja")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.eval()
        vocab = model.get_output_embeddings().weight.shape[0]
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(tokenizer.eos_token_id)
        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=tokenizer.eos_token_id)
        loaded = _Loaded(model, tokenizer, lltok, vocab, eos_ids)
        _MODELS[key] = loaded
        return loaded


def decode_threads() -> int:
    """Threads for one decoding step. On a CPU busier than its cores, torch's thread pool
    spins against other processes: one SmolLM2 token took 5 s with 2 threads and 0.06 s with
    1 at load 13 on 2 cores. TOOLREC_LOCAL_THREADS overrides."""
    env = os.environ.get("TOOLREC_LOCAL_THREADS")
    if env:
        return max(1, int(env))
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(torch.get_num_threads(), int(cores - busy)))


class LocalBackend(StepwiseBackend):
    def __init__(self, model_path: str | Path, *, name: str | None = None, dtype: torch.dtype = torch.float32,
                 list_mode: str = "optimistic", context: int | None = None):
        self.model_path = Path(model_path)
        self._context = context  # the model card's context_length
        self.name = name or f"local:{self.model_path.name}"
        self.list_mode = check_list_mode(list_mode)
        self._m = load(model_path, dtype)
        self._lock = asyncio.Lock()

    def context_tokens(self) -> int | None:
        return self._context

    async def _step(self, messages: list[Message], prefix: str, regex: str | None, *,
                    max_tokens: int, temperature: float, seed: int | None, stop_when=None,
                    top_logprobs: int = 0) -> Step:
        async with self._lock:
            return await asyncio.to_thread(self._step_sync, messages, prefix, regex,
                                           max_tokens, temperature, seed, stop_when, top_logprobs)

    def label_token_counts(self, labels: tuple[str, ...]) -> dict[str, int]:
        """How many tokens each label is where this tokenizer's answer starts (llm.labels)."""
        from toolrec_local.llm.labels import tokenizer_counts

        return tokenizer_counts(self._m.tokenizer, labels)

    # --- the decoding loop ------------------------------------------------------------------

    def _prompt_ids(self, messages: list[Message], prefix: str) -> list[int]:
        tok = self._m.tokenizer
        msgs = list(messages)
        if prefix:
            msgs.append({"role": "assistant", "content": prefix})
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not prefix,
                                       continue_final_message=bool(prefix))
        return tok(text, add_special_tokens=False)["input_ids"]

    def _step_sync(self, messages, prefix, regex, max_tokens, temperature, seed, stop_when, top_logprobs=0) -> Step:
        m = self._m
        with m.lock:
            saved = torch.get_num_threads()
            torch.set_num_threads(decode_threads())
            try:
                return self._decode(messages, prefix, regex, max_tokens, temperature, seed, stop_when, top_logprobs)
            finally:
                torch.set_num_threads(saved)

    def _decode(self, messages, prefix, regex, max_tokens, temperature, seed, stop_when, top_logprobs=0) -> Step:
        import llguidance
        import llguidance.torch as lltorch

        m = self._m
        prompt = self._prompt_ids(messages, prefix)
        matcher = None
        if regex is not None:
            matcher = llguidance.LLMatcher(m.lltok, llguidance.LLMatcher.grammar_from_regex(regex), log_level=0)
            if matcher.is_error():
                raise ToolrecError(f"the grammar does not compile: {matcher.get_error()}",
                                   "this is a bug in the grammar module; report it with the regex")
            bitmask = lltorch.allocate_token_bitmask(1, m.vocab)
        gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**31))
        out: list[int] = []
        stopped = False
        first = None  # the first token's top log-probabilities, when asked
        logits = self._forward(prompt)
        while len(out) < max_tokens:
            if matcher is not None:
                lltorch.fill_next_token_bitmask(matcher, bitmask)
                allowed = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[: m.vocab]
                logits = logits.masked_fill(torch.from_numpy(allowed == 0), float("-inf"))
            if top_logprobs and first is None:
                first = self._top_logprobs(logits, top_logprobs)
            token = self._pick(logits, temperature, gen)
            if token in m.eos_ids:
                stopped = True
                break
            if matcher is not None and not matcher.consume_token(token):
                raise ToolrecError(f"llguidance rejected a token it allowed: {matcher.get_error()}",
                                   "report this with the model and the grammar")
            out.append(token)
            if matcher is not None:
                # tokens the grammar forces (the rest of a unique title, "\nAction: ") are
                # appended without sampling and read in one forward pass
                forced = matcher.compute_ff_tokens()[: max_tokens - len(out)]
                if forced and matcher.consume_tokens(forced):
                    out.extend(forced)
                if matcher.is_stopped():
                    stopped = True
                    break
            if stop_when is not None and stop_when(m.tokenizer.decode(out, skip_special_tokens=True)):
                break
            if len(out) < max_tokens:
                logits = self._forward(prompt + out)
        text = m.tokenizer.decode(out, skip_special_tokens=True)
        return Step(text=text, tokens_in=len(prompt), tokens_out=len(out), stopped=stopped, logprobs=first)

    def _top_logprobs(self, logits: torch.Tensor, n: int) -> dict[str, float]:
        """The n most likely next tokens after the mask (as vLLM's raw_logprobs: the model's
        log-softmax, before temperature), masked tokens left out."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values, ids = torch.topk(logprobs, min(n, logprobs.shape[-1]))
        tok, out = self._m.tokenizer, {}
        for v, i in zip(values, ids):  # best first: a text two tokens share keeps the better one
            if torch.isfinite(v):
                out.setdefault(tok.decode([int(i)]), float(v))
        return out

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
        if temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen))

    @torch.inference_mode()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Logits after `ids`, feeding only what the cache does not hold yet."""
        from transformers import DynamicCache

        m = self._m
        common = 0
        limit = min(len(ids) - 1, len(m.cache_ids))  # always feed at least one token
        while common < limit and ids[common] == m.cache_ids[common]:
            common += 1
        if m.cache is None or common == 0:
            m.cache = DynamicCache()
            common = 0
        elif common < len(m.cache_ids):
            m.cache.crop(common - len(m.cache_ids))  # negative: drop that many tokens
        new = torch.tensor([ids[common:]])
        try:
            out = m.model(input_ids=new, past_key_values=m.cache, use_cache=True)
        except BaseException:
            m.cache, m.cache_ids = None, []  # the cache may be half-updated: never reuse it
            raise
        m.cache = out.past_key_values
        m.cache_ids = list(ids)
        return out.logits[0, -1]
