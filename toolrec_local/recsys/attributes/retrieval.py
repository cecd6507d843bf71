"""The retrieval tool the agent calls: `Retrieval[attr, K]` -> the top-K items of the frozen
backbone combined with the attribute's encoder (attr None = the backbone alone).

Models are loaded once per process and kept (keyed by home, dataset fingerprint and backbone;
a retrained backbone on disk is noticed and reloaded). A call is one forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolrec_local import paths
from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError
from toolrec_local.recsys import checkpoint
from toolrec_local.recsys.attributes.attribute import AttributeEncoder
from toolrec_local.recsys.config import BACKBONES, BackboneConfig, ToolConfig, check_choice, from_dict
from toolrec_local.recsys.models import build_backbone, histories, score_histories

_CACHE: dict[tuple[str, str, str], "RetrievalTool"] = {}
PARTS = ("test", "valid")
NO_ATTRIBUTE = (None, "", "None", "none")  # how the agent's `Retrieval[None, K]` may arrive


class RetrievalTool:
    def __init__(self, dataset: Dataset, backbone: str, model: nn.Module, meta: dict, stamp: tuple):
        self.dataset = dataset
        self.backbone = backbone
        self.model = model
        self.meta = meta
        self._stamp = stamp
        self._tools: dict[str, AttributeEncoder] = {}
        self._tool_stamps: dict[str, tuple] = {}
        self._weights = model.items.weight.detach().contiguous()

    # ---- loading -----------------------------------------------------------
    @classmethod
    def load(cls, dataset: Dataset, backbone: str = "sasrec", attributes: list[str] | None = None) -> "RetrievalTool":
        """The backbone and its trained attribute tools (all of them, or `attributes`)."""
        check_choice(backbone, BACKBONES, "backbone")
        folder = checkpoint.backbone_dir(dataset.name, backbone)
        key = (str(paths.home()), dataset.fingerprint, backbone)
        inst = _CACHE.get(key)
        if inst is None or inst._stamp != checkpoint.stamp(folder):
            inst = _CACHE[key] = cls._load_backbone(dataset, backbone, folder)
        trained = checkpoint.trained_tools(dataset.name, backbone)
        for name in trained if attributes is None else attributes:
            inst._ensure_tool(name, trained)
        return inst

    @classmethod
    def _load_backbone(cls, ds: Dataset, backbone: str, folder: Path) -> "RetrievalTool":
        hint = checkpoint.train_backbone_hint(ds.name, backbone)
        stamp = checkpoint.stamp(folder)
        tensors, meta = checkpoint.read(folder, ds, hint)
        cfg = from_dict(BackboneConfig, meta.get("config"), str(folder / checkpoint.CONFIG))
        if cfg.model != backbone or cfg.n_items != ds.n_items:
            raise ToolrecError(f"{folder}: config is for {cfg.model} over {cfg.n_items} items, "
                               f"not {backbone} over {ds.n_items}", hint)
        model = build_backbone(cfg)
        checkpoint.load_into(model, tensors, folder, hint)
        model.eval().requires_grad_(False)
        return cls(ds, backbone, model, meta, stamp)

    def _ensure_tool(self, attribute: str, trained: list[str]) -> None:
        ds = self.dataset
        if attribute not in ds.attributes or attribute not in trained:
            raise self._no_tool(attribute, trained)
        folder = checkpoint.tool_dir(ds.name, self.backbone, attribute)
        hint = checkpoint.train_tool_hint(ds.name, self.backbone, attribute)
        if attribute in self._tools and self._tool_stamps[attribute] == checkpoint.stamp(folder):
            return
        stamp = checkpoint.stamp(folder)
        tensors, meta = checkpoint.read(folder, ds, hint)
        if meta.get("backbone_digest") != self.meta.get("weights_digest"):
            raise ToolrecError(f"{folder}: trained on an earlier {self.backbone} backbone, not the current one", hint)
        cfg = from_dict(ToolConfig, meta.get("config"), str(folder / checkpoint.CONFIG))
        attr = ds.attributes[attribute]
        if cfg.attribute != attribute or meta.get("vocab") != attr.vocab:
            raise ToolrecError(f"{folder}: trained on other values of {attribute!r} than the dataset has now", hint)
        bcfg = self.model.cfg
        tool = AttributeEncoder(cfg, attr, bcfg.hidden, bcfg.max_len, self.model.causal)
        checkpoint.load_into(tool, tensors, folder, hint)
        self._tools[attribute] = tool.eval().requires_grad_(False)
        self._tool_stamps[attribute] = stamp

    @property
    def attributes(self) -> list[str]:
        return sorted(self._tools)

    # ---- scoring -----------------------------------------------------------
    def _tool(self, attribute: str | None) -> AttributeEncoder | None:
        if attribute in NO_ATTRIBUTE:
            return None
        if attribute not in self._tools:
            raise self._no_tool(attribute, self.attributes)
        return self._tools[attribute]

    def _no_tool(self, attribute: str, trained: list[str]) -> ToolrecError:
        ds = self.dataset
        known = f"trained: {', '.join(trained) or 'none'}; the dataset's attributes: {', '.join(ds.attributes) or 'none'}"
        if attribute in ds.attributes:
            hint = checkpoint.train_tool_hint(ds.name, self.backbone, attribute)
        else:
            hint = f"use one of: {', '.join(trained) or '(none trained: toolrec-local train tools --dataset ' + ds.name + ')'}, or None for the plain backbone"
        return ToolrecError(f"no {self.backbone} retrieval tool for attribute {attribute!r} ({known})", hint)

    def _users(self, users: Sequence[int]) -> list[int]:
        out = []
        for u in users:
            if isinstance(u, (bool, np.bool_)) or not isinstance(u, (int, np.integer)) or not 0 <= u < self.dataset.n_users:
                raise ToolrecError(f"user {u!r} is not an internal user index of {self.dataset.name!r} "
                                   f"(0..{self.dataset.n_users - 1})", "map raw ids with Dataset.user(raw_id)")
            out.append(int(u))
        return out

    def scores(self, users: Sequence[int], attribute: str | None, part: str = "test",
               exclude_history: bool = True) -> np.ndarray:
        """(len(users), n_items + 1) float32; column 0 and (unless `exclude_history` is False)
        each user's history are -inf."""
        if part not in PARTS:
            raise ToolrecError(f"unknown split part {part!r}", f"use one of: {', '.join(PARTS)}")
        tool = self._tool(attribute)
        users = self._users(users)
        if not users:
            return np.empty((0, self.dataset.n_items + 1), dtype=np.float32)
        return score_histories(self.model, tool, histories(self.dataset, users, part), self._weights,
                               exclude_history=exclude_history)

    def _check_k(self, k: int) -> int:
        n = self.dataset.n_items
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ToolrecError(f"K must be an integer from 1 to {n} (the catalogue size), got {k!r}",
                               "ask for fewer items, e.g. K = 10")
        return int(k)

    def retrieve(self, user: int, attribute: str | None, k: int, exclude: Iterable[int] = (),
                 part: str = "test", exclude_history: bool = True) -> list[tuple[int, float]]:
        """Top-k (item, score), best first; `exclude` is never returned, nor the history unless
        `exclude_history` is False (the agent's tools under `eval --history keep`)."""
        k = self._check_k(k)
        row = self.scores([user], attribute, part, exclude_history=exclude_history)[0]
        drop = np.fromiter((int(i) for i in exclude), dtype=np.int64)
        if len(drop):
            row[drop[(drop > 0) & (drop < len(row))]] = -np.inf
        return top_k(row, k)

    def retrieve_batch(self, users: Sequence[int], attribute: str | None, k: int,
                       part: str = "test") -> list[list[tuple[int, float]]]:
        k = self._check_k(k)
        return [top_k(row, k) for row in self.scores(users, attribute, part)]


def top_k(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best finite scores, ties broken by the smaller item id (stable across runs)."""
    k = min(k, len(row))
    cand = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
    # Items tied with the k-th score may lie outside the partition; take them all, then cut.
    cand = np.flatnonzero(row >= row[cand].min()) if len(cand) else cand
    cand = cand[np.lexsort((cand, -row[cand]))][:k]
    return [(int(i), float(row[i])) for i in cand if np.isfinite(row[i])]


def clear_cache() -> None:
    _CACHE.clear()
