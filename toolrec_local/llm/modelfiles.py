"""Small fixes to the files of a saved Hugging Face model folder so that every loader reads
them the same way (vLLM, transformers 4.x and 5.x)."""

from __future__ import annotations

import json
from pathlib import Path

from toolrec_local.errors import ToolrecError


def finish_tokenizer_config(folder: Path, fallback_template: str | None = None) -> None:
    """Put the chat template into tokenizer_config.json as well as chat_template.jinja (older
    loaders read only the former), name the class as every transformers release knows it, and
    drop load-time flags that transformers 5 writes back."""
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    jinja = Path(folder) / "chat_template.jinja"
    template = cfg.get("chat_template") or (jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
    template = template or fallback_template
    if not template:
        raise ToolrecError(f"the tokenizer in {folder} has no chat template",
                           "set chat_template in the model card to a file in serving/")
    cfg["chat_template"] = template
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
