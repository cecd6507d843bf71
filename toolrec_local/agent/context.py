"""What an agent run needs, built once per process: the dataset, the retrieval tool, the
backend, the configuration, and the prompts rendered for them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cached_property

from toolrec_local.agent.prompts import Renderer, load_prompts
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.meter import note_call
from toolrec_local.llm.protocol import ActionGrammar, Backend, Completion, Constraint


FINISH_MODES = ("llm", "last-list")
REPEATED_LISTS = ("refer", "full")
ANSWER_SPACES = ("gathered", "catalogue")
HISTORY_MODES = ("exclude", "keep")
LIST_DENSITY = 0.7  # item-list prompts start at this share of chars_per_token


@dataclass(frozen=True)
class AgentConfig:
    top_n: int = 10  # N of the final list
    # Decision rounds (a Finish or an invalid reply counts as one), the forced final step not
    # counted: the authors' chat_RecAct.py allows 7, then forces finish[] (their conclude_step).
    max_rounds: int = 7
    history_len: int = 10  # history items shown (most recent)
    n_demos: int = 3  # in-context demonstrations (prompts/<domain>.yaml); the authors ship 3
    # Items of each tool list shown in the agent's observation; None: the whole list, as the
    # authors' observation is (a number cuts each list to its first N, "... and M more.").
    show_items: int | None = None
    observation_window: int | None = None  # rounds whose observations stay in full (None: all)
    max_k: int = 50  # K allowed in an action (grammar bound; free text is clamped to it)
    default_k: int = 20  # free text only: K when the model wrote Retrieval[genre]
    # Rank and Finish see every gathered list (the authors' prompt has no cap); a number caps
    # the distinct candidates, taken from the lists in turn (memory.interleave).
    rank_max_candidates: int | None = None
    rank_with_names: bool = True  # Rank options are "<id>, <name>" (False: "<id>")
    max_retries: int = 3  # tool re-runs after memory rejects items, before the repair
    # What Finish (and the round cap) does: "llm" - the authors' final step, the LLM ranks
    # every gathered list into the top N; "last-list" - the ablation: the last stored list,
    # cut or padded by retrieval score, no LLM call.
    finish: str = "llm"
    # A tool list identical to one gathered earlier (a repeated call: same items, same scores):
    # "refer" - its observation, and its place in the Rank and final prompts, name the earlier
    # list instead of listing the same lines again (the information is the same; the prompt is
    # shorter and stays cached); "full" - listed again, as the authors' code does.
    repeated_lists: str = "refer"
    # What Rank and the final step may answer: "gathered" - only items the tools returned for
    # this user; "catalogue" - any catalogue item (the authors' code accepts any id; their
    # prompts ask for items from the lists shown). Both: distinct, none from the history.
    answer_space: str = "gathered"
    # "keep": the agent's retrieval lists hold history items too (the authors' RecBole tools do
    # not mask them); answers never do. "exclude": the tools mask the history.
    history: str = "exclude"
    grammar: bool = True  # False: free text, tolerant parser ("--no-grammar")
    action_max_tokens: int = 128
    temperature: float = 0.0  # 0: greedy (the paper ran ChatGPT at its default, 1)
    prompts_dir: str | None = None  # default: the repository's prompts/
    # The model's context (e.g. vLLM --max-model-len); None: the backend's model card says it
    # (see `model_context`); 0: no limit. With a limit, every prompt is fitted into it
    # with room for the reply and `context_margin`: older observations are shortened first,
    # then demonstrations dropped, then older thoughts omitted, each for good (so the prompt's
    # leading bytes stay cached: agent/conversation.py); a run whose prompt cannot fit any
    # more finishes ("context"). Rank and the final step cut their candidates, taking
    # from each list in turn. Sizes are estimated from characters (chars_per_token; item-list
    # prompts from a lower density; each lowered to what the backend's per-request prompt
    # token counts show when they are smaller).
    context_tokens: int | None = None
    chars_per_token: float = 2.5
    context_margin: int = 64

    def __post_init__(self):
        checks = {
            "top_n": self.top_n >= 1, "max_rounds": self.max_rounds >= 1, "history_len": self.history_len >= 0,
            "n_demos": self.n_demos >= 0, "show_items": self.show_items is None or self.show_items >= 1,
            "max_k": self.max_k >= 1,
            "default_k": 1 <= self.default_k <= self.max_k,
            "rank_max_candidates": self.rank_max_candidates is None or self.rank_max_candidates >= 1,
            "finish": self.finish in FINISH_MODES, "repeated_lists": self.repeated_lists in REPEATED_LISTS,
            "answer_space": self.answer_space in ANSWER_SPACES, "history": self.history in HISTORY_MODES,
            "temperature": 0.0 <= self.temperature <= 2.0,
            "max_retries": self.max_retries >= 0,
            "observation_window": self.observation_window is None or self.observation_window >= 1,
            "context_tokens": self.context_tokens is None or self.context_tokens == 0 or self.context_tokens >= 256,
            "chars_per_token": self.chars_per_token > 0, "context_margin": self.context_margin >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ToolrecError(f"agent settings out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}",
                               "use positive values (default_k within 1..max_k, temperature 0..2, "
                               f"finish one of {', '.join(FINISH_MODES)}, repeated_lists one of "
                               f"{', '.join(REPEATED_LISTS)}, answer_space one of {', '.join(ANSWER_SPACES)}, "
                               f"history one of {', '.join(HISTORY_MODES)})")

    def with_(self, **changes) -> "AgentConfig":
        return replace(self, **changes)


@dataclass
class AgentContext:
    """Built once per process and shared by every concurrent run (runs keep their own state)."""

    dataset: object  # toolrec_local.data.Dataset
    tool: object  # RetrievalTool: .attributes, .retrieve(user, attribute, k, exclude=(), part=)
    backend: Backend
    config: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self):
        attrs = tuple(self.tool.attributes)
        self.action_grammar = ActionGrammar(retrieval_attributes=attrs, max_k=self.config.max_k)
        self.renderer = Renderer(
            self.dataset, load_prompts(self.dataset.domain, self.config.prompts_dir), attrs,
            top_n=self.config.top_n, max_k=self.config.max_k, history_len=self.config.history_len,
            n_demos=self.config.n_demos, show_items=self.config.show_items, finish=self.config.finish,
            repeated_lists=self.config.repeated_lists,
        )

        # Prompt density, per kind: item lists (ids, names, scores) tokenise denser than the
        # agent's prose (tiny-random's tokenizer: 1.9 vs 2.6-3.0 characters per token), so
        # they start lower; both only ever go down, to what the backend's counts show.
        self.density = {"action": self.config.chars_per_token, "list": self.config.chars_per_token * LIST_DENSITY}
        limit = self.config.context_tokens
        self.context_tokens = model_context(self.backend) if limit is None else (limit or None)

    @cached_property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.tool.attributes)

    @property
    def chars_per_token(self) -> float:  # the agent's prompts (kept for callers that read it)
        return self.density["action"]

    def estimate_tokens(self, messages: list[dict], kind: str = "action") -> int:
        """A prompt's size in tokens, estimated from its characters (+8 per message for the
        chat template's markers); kind "list" for Rank and final-step prompts."""
        chars = sum(len(m["content"]) for m in messages)
        return int(chars / self.density[kind]) + 8 * len(messages) + 8

    def list_reply_tokens(self, options: tuple[str, ...], k: int) -> int:
        """max_tokens for a k-line answer over `options`: the k longest lines, estimated."""
        longest = sorted((len(o) for o in options), reverse=True)[:k]
        return int(sum(n / self.density["list"] + 2 for n in longest)) + 8

    def fits(self, messages: list[dict], reply_tokens: int) -> bool:
        limit = self.context_tokens
        return limit is None or self.estimate_tokens(messages) + reply_tokens + self.config.context_margin <= limit

    @property
    def action_reply_tokens(self) -> int:
        """Room for an agent turn: a stepwise backend may re-send a thought cut at its budget
        as a prefix and then write the action line."""
        return max(self.config.action_max_tokens, self.action_grammar.thought_max_tokens + 48)

    async def ask(self, messages: list[dict], constraint: Constraint, max_tokens: int, seed: int) -> tuple[Completion, float]:
        """One LLM call; returns the completion and the wall time it took here."""
        t0 = time.perf_counter()
        c = await self.backend.generate(messages, constraint if self.config.grammar else None,
                                        max_tokens=max_tokens, temperature=self.config.temperature, seed=seed)
        wall = time.perf_counter() - t0
        note_call(c, max_tokens, constraint)  # the eval runner's live progress and capacity limiter
        if c.tokens_in > 0:  # learn the tokenizer's density when it is denser than assumed
            chars = sum(len(m["content"]) for m in messages)
            per_request = c.tokens_in / max(1, c.calls)  # a stepwise answer re-sends the prompt per step
            kind = "action" if isinstance(constraint, ActionGrammar) else "list"
            self.density[kind] = min(self.density[kind], chars / per_request)
        return c, wall


def model_context(backend) -> int | None:
    """The context of the backend's model. A backend that can ask its server says what the
    server enforces (vLLM: `max_model_len` in /v1/models, whatever `--max-model-len` it was
    started with). Otherwise the card (backends are named "<kind>:<card>"): for vllm the card's
    `--max-model-len` server argument (what `toolrec-local serve` starts it with), else the
    card's context_length. None for a backend that neither asks nor is named after a card."""
    ask = getattr(backend, "served_context", None)
    served = ask() if callable(ask) else None
    if served:
        return int(served)
    kind, _, card_name = getattr(backend, "name", "").partition(":")
    if not card_name:
        return None
    from toolrec_local.llm.registry import load_card

    try:
        card = load_card(card_name)
    except ToolrecError:
        return None
    args = list(card.vllm_args)
    if kind == "vllm":
        for pos, arg in enumerate(args):
            if arg == "--max-model-len" and pos + 1 < len(args):
                return int(args[pos + 1])
            if arg.startswith("--max-model-len="):
                return int(arg.split("=", 1)[1])
    return int(card.context_length)
