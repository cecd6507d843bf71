"""What an agent run needs, built once per process: the dataset, the retrieval tool, the
backend, the configuration, and the prompts rendered for them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from toolrec_local.agent.prompts import Renderer, load_prompts
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.labels import check_labels
from toolrec_local.llm.meter import note_call
from toolrec_local.llm.protocol import ActionGrammar, Backend, Completion, Constraint, context_tokens
from toolrec_local.settings import RunSettings, setting_fields

LIST_DENSITY = 0.7  # item-list prompts start at this share of chars_per_token


@dataclass(frozen=True)
class AgentConfig(RunSettings):
    """The run's settings (top_n, grammar, temperature, finish, repeated_lists, ...: checked
    there) and the agent's own."""

    history_len: int = 10  # history items shown (most recent)
    observation_window: int | None = None  # rounds whose observations stay in full (None: all)
    max_k: int = 50  # K allowed in an action (grammar bound; free text is clamped to it)
    default_k: int = 20  # free text only: K when the model wrote Retrieval[genre]
    # Rank and Finish see every gathered list (the authors' prompt has no cap); a number caps
    # the distinct candidates, taken from the lists in turn (memory.interleave).
    rank_max_candidates: int | None = None
    rank_with_names: bool = True  # Rank options are "<id>, <name>" (False: "<id>")
    max_retries: int = 3  # tool re-runs after memory rejects items, before the repair
    action_max_tokens: int = 128
    prompts_dir: str | None = None  # default: the repository's prompts/
    # The model's context (e.g. vLLM --max-model-len); None: the backend says what it serves
    # (`llm.protocol.context_tokens`); 0: no limit. With a limit, every prompt is fitted into it
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
        super().__post_init__()
        checks = {
            "history_len": self.history_len >= 0, "max_k": self.max_k >= 1,
            "default_k": 1 <= self.default_k <= self.max_k,
            "rank_max_candidates": self.rank_max_candidates is None or self.rank_max_candidates >= 1,
            "max_retries": self.max_retries >= 0,
            "observation_window": self.observation_window is None or self.observation_window >= 1,
            "context_tokens": self.context_tokens is None or self.context_tokens == 0 or self.context_tokens >= 256,
            "chars_per_token": self.chars_per_token > 0, "context_margin": self.context_margin >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ToolrecError(f"agent settings out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}",
                               "use positive values (default_k within 1..max_k)")

    @classmethod
    def of(cls, settings: RunSettings, **agent) -> "AgentConfig":
        """The agent's configuration for a run: its settings whole, and the agent's own fields."""
        return cls(**{f: getattr(settings, f) for f in setting_fields()}, **agent)


@dataclass
class AgentContext:
    """Built once per process and shared by every concurrent run (runs keep their own state)."""

    dataset: object  # toolrec_local.data.Dataset
    tool: object  # RetrievalTool: .attributes, .retrieve(user, attribute, k, exclude=(), part=)
    backend: Backend
    config: AgentConfig = field(default_factory=AgentConfig)
    # --rank-llm: the backend every ranking call goes to (Rank, the final step, the ranking
    # baselines); None: `backend`
    rank_backend: Backend | None = None

    def __post_init__(self):
        attrs = tuple(self.tool.attributes)
        self.action_grammar = ActionGrammar(retrieval_attributes=attrs, max_k=self.config.max_k)
        self.renderer = Renderer(
            self.dataset, load_prompts(self.dataset.domain, self.config.prompts_dir), attrs,
            top_n=self.config.top_n, max_k=self.config.max_k, history_len=self.config.history_len,
            n_demos=self.config.demos, show_items=self.config.observe_items, finish=self.config.finish_mode,
            repeated_lists=self.config.repeated_lists,
        )

        # Prompt density, per kind: item lists (ids, names, scores) tokenise denser than the
        # agent's prose (tiny-random's tokenizer: 1.9 vs 2.6-3.0 characters per token), so
        # they start lower; both only ever go down, to what the backend's counts show.
        self.density = {"action": self.config.chars_per_token, "list": self.config.chars_per_token * LIST_DENSITY}
        limit = self.config.context_tokens
        self.context_tokens = context_tokens(self.backend) if limit is None else (limit or None)
        # the context ranking prompts are fitted into: the ranking model's
        self.rank_context_tokens = self.context_tokens
        if self.rank_backend is not None and limit is None:
            self.rank_context_tokens = context_tokens(self.rank_backend)
        if self.config.rank_by == "score":  # refused before any user runs, not at the first ranking
            self.renderer.require_style("score")
            check_labels(self.ranker)

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

    @property
    def ranker(self) -> Backend:
        """The backend the ranking calls go to (--rank-llm, else the agent's)."""
        return self.rank_backend or self.backend

    async def ask(self, messages: list[dict], constraint: Constraint, max_tokens: int, seed: int,
                  top_logprobs: int = 0, ranking: bool = False) -> tuple[Completion, float]:
        """One LLM call; returns the completion and the wall time it took here. `top_logprobs`
        (a choice only): the answer's first token's top log-probabilities, in `.logprobs`;
        `ranking`: a ranking call (to `ranker`)."""
        t0 = time.perf_counter()
        asked = {"top_logprobs": top_logprobs} if top_logprobs else {}  # backends that never score lack it
        c = await (self.ranker if ranking else self.backend).generate(messages, constraint if self.config.grammar else None,
                                        max_tokens=max_tokens, temperature=self.config.temperature, seed=seed,
                                        **asked)
        wall = time.perf_counter() - t0
        note_call(c, max_tokens, constraint)  # the eval runner's live progress and capacity limiter
        if c.tokens_in > 0:  # learn the tokenizer's density when it is denser than assumed
            chars = sum(len(m["content"]) for m in messages)
            per_request = c.tokens_in / max(1, c.calls)  # a stepwise answer re-sends the prompt per step
            kind = "action" if isinstance(constraint, ActionGrammar) else "list"
            self.density[kind] = min(self.density[kind], chars / per_request)
        return c, wall

