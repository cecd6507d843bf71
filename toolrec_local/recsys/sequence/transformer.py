"""The Transformer block shared by SASRec, BERT4Rec and the attribute encoders.

Pre-LayerNorm, as in pmixer/SASRec.pytorch and nanoGPT: it trains stably without warm-up,
which matters when a CPU run only affords a few dozen epochs. RecBole's post-LayerNorm layout
and its positions counted from the first item are options (BackboneConfig.norm, .positions),
to compare with RecBole's own SASRec.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from toolrec_local.recsys.config import POSITIONS


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, query_last: bool = False) -> torch.Tensor:
        """x (B, L, d); mask (B, 1, L, L) or broadcastable, True = may attend. With
        `query_last`, only the last position queries (keys and values are all positions):
        (B, 1, d) out, and mask is (B, 1, 1, L)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if query_last:
            q = q[:, :, -1:]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, q.shape[2], d))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, inner: int = 0, post_norm: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ln2 = nn.LayerNorm(hidden)
        # SASRec's point-wise feed-forward keeps the width (inner = 0: hidden -> hidden), unlike
        # GPT's 4x; RecBole's SASRec widens it (inner_size 256 for hidden 64).
        inner = inner or hidden
        self.ff = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, query_last: bool = False) -> torch.Tensor:
        if query_last:  # the last position's output only: (B, 1, d)
            mask, residual = mask[:, :, -1:], x[:, -1:]
        else:
            residual = x
        if self.post_norm:  # RecBole's (and BERT's) order: normalise after each residual sum
            x = self.ln1(residual + self.drop(self.attn(x, mask, query_last=query_last)))
            return self.ln2(x + self.drop(self.ff(x)))
        x = residual + self.drop(self.attn(self.ln1(x), mask, query_last=query_last))
        return x + self.drop(self.ff(self.ln2(x)))


class Encoder(nn.Module):
    """Positions + blocks + final norm over a (B, L, d) input; padding rows are zeroed after
    every block so they never leak into the representation."""

    def __init__(self, hidden: int, layers: int, heads: int, dropout: float, max_len: int, causal: bool,
                 inner: int = 0, post_norm: bool = False, positions: str = "last"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}")
        self.causal, self.post_norm, self.positions = causal, post_norm, positions
        self.pos = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout, inner, post_norm) for _ in range(layers))
        # Pre-norm: the final norm. Post-norm: the blocks end normalised, and this norm is
        # RecBole's on the input (items + positions), before dropout.
        self.ln = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (B, L, d) already scaled input embeddings; keep (B, L) bool, False = padding.
        Returns (B, L, d), or with `last_only` (B, 1, d): the last position, which is the user
        at inference, computed without the other positions' outputs in the last block (the
        same numbers, a fraction of the last block's work)."""
        n = x.shape[1]
        if self.positions == "last":  # sequences are right-aligned: the last item has the last position
            x = x + self.pos.weight[-n:]
        else:  # counted from each sequence's first item (RecBole)
            x = x + self.pos((keep.cumsum(1) - 1).clamp(min=0))
        x = self.drop(self.ln(x) if self.post_norm else x)
        mask = attention_mask(keep, self.causal)
        keepf = keep.unsqueeze(-1).to(x.dtype)
        x = x * keepf
        blocks = list(self.blocks)
        if last_only and blocks:
            *blocks, final = blocks
        for block in blocks:
            x = block(x, mask) * keepf
        if last_only:
            x = final(x, mask, query_last=True) * keepf[:, -1:] if self.blocks else x[:, -1:]
        return x if self.post_norm else self.ln(x)


def init_embeddings(model: nn.Module, cfg) -> None:
    """Item (and position) embeddings of a backbone as `cfg.init` says (config.BackboneConfig).
    RecBole also starts every linear layer at N(0, 0.02); on ML-100K that lowered SASRec's
    kept-history validation NDCG@10 (0.0625 -> 0.0648 without it, recbole preset), so only the
    embeddings follow RecBole here."""
    if cfg.init == "recbole":
        nn.init.normal_(model.items.weight, std=0.02)
        nn.init.normal_(model.encoder.pos.weight, std=0.02)
    elif cfg.init == "sasrec":
        nn.init.normal_(model.items.weight, std=cfg.hidden ** -0.5)
    else:
        raise ValueError(f"unknown embedding init {cfg.init!r}")
    with torch.no_grad():
        model.items.weight[0].zero_()


def embed_scale(cfg) -> float:
    return math.sqrt(cfg.hidden) if cfg.init == "sasrec" else 1.0


def attention_mask(keep: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) bool. Every query may see itself, so a fully padded row never softmaxes
    over nothing (that would give NaN)."""
    n = keep.shape[1]
    allowed = keep[:, None, None, :].expand(-1, 1, n, n)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=keep.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=keep.device)
    return allowed | eye
