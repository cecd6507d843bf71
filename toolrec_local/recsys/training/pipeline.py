"""Whole training runs: backbone, then the attribute tools on the frozen backbone, reusing
whatever valid checkpoints already exist when asked to."""

from __future__ import annotations

from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError
from toolrec_local.recsys import checkpoint
from toolrec_local.recsys.config import TrainConfig, settings
from toolrec_local.recsys.attributes.retrieval import RetrievalTool
from toolrec_local.recsys.training.train import train_backbone, train_tool
from toolrec_local.recsys.attributes.word_vectors import GLOVE_PACKAGE


def run_backbone(ds: Dataset, model: str, preset: str = "default", show: bool = False, **overrides) -> dict:
    bcfg, tcfg, _ = settings(preset, model, ds.n_items, **overrides)
    return train_backbone(ds, bcfg, tcfg, show=show)[1]


def run_tools(ds: Dataset, backbone: str, attributes: list[str] | None, train: TrainConfig, layers: int = 1,
              heads: int = 2, word_vectors: str | None = GLOVE_PACKAGE, fusion_init: str = "random",
              show: bool = False) -> dict[str, dict]:
    """Train one tool per attribute (all of the dataset's when None) on the saved backbone.
    Text values are embedded with `word_vectors` (GloVe 6B 50-d by default; "none" = learned)."""
    names = list(ds.attributes) if attributes is None else attributes
    for name in names:
        ds.attribute(name)  # unknown names fail before any training
    base = RetrievalTool.load(ds, backbone, attributes=[])
    out = {}
    for name in names:
        out[name] = train_tool(ds, name, base.model, base.meta, train, layers=layers, heads=heads,
                               word_vectors=word_vectors, fusion_init=fusion_init, show=show)[1]
    return out


def ensure_trained(ds: Dataset, backbone: str = "sasrec", attributes: list[str] | None = None,
                   preset: str = "fast", show: bool = False, word_vectors: str | None = GLOVE_PACKAGE,
                   fusion_init: str = "random", **overrides) -> RetrievalTool:
    """The retrieval tool with `attributes` (default: all of the dataset's), training only what
    has no valid checkpoint: a backbone that is missing or trained on other data is retrained
    (and with it every tool); a missing or stale tool is retrained alone."""
    names = list(ds.attributes) if attributes is None else attributes
    _, _, tool_train = settings(preset, backbone, ds.n_items, **overrides)
    try:
        RetrievalTool.load(ds, backbone, attributes=[])
    except ToolrecError:
        run_backbone(ds, backbone, preset, show=show, **overrides)
    missing = []
    for name in names:
        try:
            RetrievalTool.load(ds, backbone, attributes=[name])
        except ToolrecError:
            missing.append(name)
    if missing:
        run_tools(ds, backbone, missing, tool_train, word_vectors=word_vectors, fusion_init=fusion_init, show=show)
    return RetrievalTool.load(ds, backbone, attributes=names)


__all__ = ["run_backbone", "run_tools", "ensure_trained", "checkpoint"]
