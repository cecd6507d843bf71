"""P5, the generative recommender of the paper's Table 2, as OpenP5 runs it for sequential
recommendation: a T5 encoder-decoder reads a prompt ("Considering user_196 has interacted with
items <a3> <b17> <a3> <b20> … . What is the next recommendation for the user ?") and generates
the next item's id token by token. Ranking decodes by beam search constrained to a prefix trie
of the valid ids, so every generated id is a real item (none from the history when the history
is excluded) and the beams give a top-k list of distinct items.

No pretrained T5 is obtainable here, so the model is a small T5 trained from scratch
(transformers' T5ForConditionalGeneration) over a vocabulary built here: the prompt's words,
one token per user (OpenP5's user_<id>) and the item-id tokens.

Item ids (OpenP5; Hua et al. 2023, "How to Index Item IDs for Recommendation Foundation
Models"): an item's index number is written as `levels` digits in base `base`, and digit l is a
token of level l (<a7>, <b31>), so items that share a first digit share a first token.
`sequential` numbers the items in the order users first consumed them, user by user, so items
consumed together get nearby numbers and share prefixes: the collaborative signal the first
decoding step can use. `random` numbers them at random (no shared structure). Both are built
from the training parts only, so no validation or test interaction leaks into the ids.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError

INDEXES = ("sequential", "random")
SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2; <pad> is also the decoder's start token
LEVEL_LETTERS = "abcdefgh"


@dataclass(frozen=True)
class P5Config:
    n_items: int
    index: str = "sequential"
    levels: int = 2
    max_history: int = 20  # items shown in the prompt (the most recent)
    d_model: int = 128
    d_ff: int = 512
    layers: int = 2  # encoder layers, and as many decoder layers
    heads: int = 4
    dropout: float = 0.1

    @property
    def base(self) -> int:
        """The smallest base whose `levels` digits number every item."""
        b = max(2, math.ceil(self.n_items ** (1 / self.levels)))
        while b ** self.levels < self.n_items:
            b += 1
        while b > 2 and (b - 1) ** self.levels >= self.n_items:
            b -= 1
        return b


# ---- item ids --------------------------------------------------------------------------
def index_numbers(ds: Dataset, kind: str, seed: int = 0) -> np.ndarray:
    """(n_items + 1,) int64: item i's index number, 0..n_items-1; entry 0 (padding) is -1."""
    n = ds.n_items
    if kind == "random":
        order = 1 + np.random.default_rng(seed).permutation(n)
    elif kind == "sequential":
        train = [ds.train_sequence(u) for u in range(ds.n_users)]
        seen = dict.fromkeys(int(i) for s in train for i in s)
        rest = [i for i in range(1, n + 1) if i not in seen]  # never in training: numbered last
        order = np.array(list(seen) + rest, dtype=np.int64)
    else:
        raise ToolrecError(f"unknown P5 item indexing {kind!r}", f"use one of: {', '.join(INDEXES)}")
    numbers = np.full(n + 1, -1, dtype=np.int64)
    numbers[order] = np.arange(n)
    return numbers


class ItemIndex:
    """The trie of valid ids: item i is `numbers[i]` written as `levels` base-`base` digits."""

    def __init__(self, numbers: np.ndarray, levels: int, base: int):
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.levels, self.base = levels, base
        if self.numbers[1:].min(initial=0) < 0 or self.numbers[1:].max(initial=0) >= base ** levels:
            raise ValueError("item numbers out of range for the index")
        self.item_of = np.zeros(base ** levels, dtype=np.int64)  # 0 = no item has this id
        self.item_of[self.numbers[1:]] = np.arange(1, len(self.numbers))
        self._counts = [np.bincount(self.numbers[1:] // base ** (levels - depth), minlength=base ** depth)
                        for depth in range(1, levels + 1)]

    def digits(self, items: np.ndarray) -> np.ndarray:
        """(len(items), levels) digits, most significant first."""
        n = self.numbers[np.asarray(items, dtype=np.int64)]
        return (n[:, None] // self.base ** np.arange(self.levels - 1, -1, -1)) % self.base

    def available(self, excluded: list[np.ndarray]) -> list[torch.Tensor]:
        """Per prefix length 1..levels, a (users, base ** length) bool tensor: True where some
        item outside that user's `excluded` items has the prefix."""
        out = []
        rows = np.concatenate([np.full(len(np.unique(e)), r) for r, e in enumerate(excluded)]).astype(np.int64) \
            if excluded else np.empty(0, dtype=np.int64)
        items = np.concatenate([np.unique(np.asarray(e, dtype=np.int64)) for e in excluded]) \
            if excluded else np.empty(0, dtype=np.int64)
        items, rows = items[items > 0], rows[items > 0]
        for depth, counts in enumerate(self._counts, start=1):
            avail = np.repeat(counts[None], len(excluded), axis=0)
            np.subtract.at(avail, (rows, self.numbers[items] // self.base ** (self.levels - depth)), 1)
            out.append(torch.from_numpy(avail > 0))
        return out


# ---- prompt and vocabulary ------------------------------------------------------------
def prompt_template(folder: str | None = None) -> str:
    """OpenP5's sequential prompt from p5.yaml in $TOOLREC_PROMPTS if set, else in the package's
    prompts (a wheel's package data, or the repository's prompts/: toolrec_local.resources)."""
    import yaml

    from toolrec_local.resources import data_dir

    root = Path(folder or os.environ.get("TOOLREC_PROMPTS") or data_dir("prompts"))
    path = root.expanduser() / "p5.yaml"
    if not path.is_file():
        raise ToolrecError(f"no P5 prompt file {path}", "restore prompts/p5.yaml (key: sequential)")
    try:
        template = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("sequential")
    except yaml.YAMLError as exc:
        raise ToolrecError(f"{path}: not valid YAML ({exc})", "fix the file (key: sequential)") from None
    if not isinstance(template, str):
        raise ToolrecError(f"{path}: no `sequential` template", "add one: a sentence with {user} and {history}")
    return template


class Prompt:
    """Turns (user, history) into encoder token ids. The vocabulary: T5's specials, the
    template's words, one token per user, then `base` digit tokens per level."""

    def __init__(self, template: str, user_ids: list[str], levels: int, base: int):
        self.template = template
        self.words = template.split()
        for slot in ("{user}", "{history}"):
            if sum(slot in w for w in self.words) != 1:
                raise ToolrecError(f"the P5 prompt must hold {slot} exactly once: {template!r}",
                                   "fix prompts/p5.yaml")
        self.user_word = next(w for w in self.words if "{user}" in w)
        plain = [w for w in self.words if "{user}" not in w and "{history}" not in w]
        users = [self.user_word.replace("{user}", u) for u in user_ids]
        levels_tokens = [f"<{LEVEL_LETTERS[level]}{d}>" for level in range(levels) for d in range(base)]
        self.tokens = list(SPECIALS) + list(dict.fromkeys(plain)) + users + levels_tokens
        ids = {t: i for i, t in enumerate(self.tokens)}
        if len(ids) != len(self.tokens):
            raise ToolrecError("P5 vocabulary: a user token equals a prompt word or another user's token",
                               "change the prompt's words in prompts/p5.yaml")
        self.user_token = np.array([ids[u] for u in users], dtype=np.int64)
        self.level_ids = torch.tensor([[ids[f"<{LEVEL_LETTERS[level]}{d}>"] for d in range(base)]
                                       for level in range(levels)], dtype=torch.long)
        self._pieces = [("user" if "{user}" in w else "history" if "{history}" in w else ids[w]) for w in self.words]

    def encode(self, user: int, history_digits: np.ndarray) -> list[int]:
        """Token ids of the prompt for `user` with the history given as (items, levels) digits; ends in </s>."""
        level_ids = self.level_ids.numpy()
        out: list[int] = []
        for piece in self._pieces:
            if piece == "user":
                out.append(int(self.user_token[user]))
            elif piece == "history":
                out.extend(level_ids[np.arange(history_digits.shape[1]), history_digits].reshape(-1).tolist())
            else:
                out.append(piece)
        out.append(1)  # </s>
        return out

    def batch(self, users: list[int], digit_histories: list[np.ndarray]) -> torch.Tensor:
        """(B, length) right-padded with 0."""
        rows = [self.encode(u, h) for u, h in zip(users, digit_histories)]
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return out


# ---- the model ---------------------------------------------------------------------------
class P5(nn.Module):
    """A T5 and the item numbering it was trained with (a buffer, so one safetensors file
    holds both)."""

    def __init__(self, cfg: P5Config, vocab_size: int):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        self.cfg = cfg
        self.t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=vocab_size, d_model=cfg.d_model, d_kv=cfg.d_model // cfg.heads, d_ff=cfg.d_ff,
            num_layers=cfg.layers, num_decoder_layers=cfg.layers, num_heads=cfg.heads, dropout_rate=cfg.dropout,
            feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            tie_word_embeddings=True, use_cache=False))
        self.register_buffer("item_numbers", torch.full((cfg.n_items + 1,), -1, dtype=torch.long))

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the target ids' tokens (B, levels), teacher forced."""
        return self.t5(input_ids=inputs, attention_mask=inputs > 0, labels=labels).loss

    @torch.inference_mode()
    def beam_search(self, inputs: torch.Tensor, available: list[torch.Tensor], level_ids: torch.Tensor,
                    item_of: np.ndarray, k: int, beams: int) -> list[list[int]]:
        """Top-k distinct items per row by beam search over the id trie: at each level only
        digits with an available item below them may extend a beam; beams are ranked by the
        sum of their tokens' log-probabilities."""
        from transformers.modeling_outputs import BaseModelOutput

        dev = self.item_numbers.device  # the model's device (a GPU when trained there)
        inputs, level_ids, available = inputs.to(dev), level_ids.to(dev), [a.to(dev) for a in available]
        users, base = inputs.shape[0], level_ids.shape[1]
        mask = inputs > 0
        hidden = self.t5.get_encoder()(input_ids=inputs, attention_mask=mask).last_hidden_state
        prefix = torch.zeros(users, 1, dtype=torch.long, device=dev)  # the beams' id prefixes as numbers
        score = torch.zeros(users, 1, device=dev)
        tokens = torch.zeros(users, 1, 0, dtype=torch.long, device=dev)
        for level in range(level_ids.shape[0]):
            nb = prefix.shape[1]
            start = torch.zeros(users * nb, 1, dtype=torch.long, device=dev)
            out = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=hidden.repeat_interleave(nb, 0)),
                          attention_mask=mask.repeat_interleave(nb, 0),
                          decoder_input_ids=torch.cat([start, tokens.reshape(users * nb, level)], 1), use_cache=False)
            logp = out.logits[:, -1].float().log_softmax(-1)[:, level_ids[level]].view(users, nb, base)
            child = prefix.unsqueeze(-1) * base + torch.arange(base, device=dev)
            ok = available[level].gather(1, child.reshape(users, -1)).view(users, nb, base)
            cand = (score.unsqueeze(-1) + logp).masked_fill(~ok, float("-inf")).view(users, -1)
            top = cand.topk(min(beams, nb * base), dim=1)
            src = top.indices // base
            prefix, score = child.reshape(users, -1).gather(1, top.indices), top.values
            kept = tokens.gather(1, src.unsqueeze(-1).expand(-1, -1, level))
            tokens = torch.cat([kept, level_ids[level][top.indices % base].unsqueeze(-1)], 2)
        found = item_of[prefix.cpu().numpy()]
        return [[int(i) for i, s in zip(row, srow) if np.isfinite(s)][:k] for row, srow in zip(found, score.cpu().numpy())]
