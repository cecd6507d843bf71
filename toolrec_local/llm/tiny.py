"""A tiny random-weight LLaMA model built locally in seconds, for tests and demos of the whole
serving path (vLLM server, transformers in process) without downloading anything.

Its words are noise, but its tokenizer is real: a byte-level BPE trained here on text the
project has, so every string (any title, any byte) is encodable, and a ChatML chat template
that vLLM's chat endpoint and transformers' `apply_chat_template` both use. Under a grammar
it produces valid, if arbitrary, output, which is exactly what pipeline tests need.

Shape: 2 layers, hidden 128, 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32),
2 KV heads, 4096 positions. Built deterministically from a seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from toolrec_local import paths
from toolrec_local.llm.modelfiles import finish_tokenizer_config

NAME = "tiny-random"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS = "<|im_end|>"
PAD = "<|endoftext|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Always in the corpus, so the vocabulary is the same wherever the model is built.
BUILTIN_TEXT = """\
Thought: The user likes science fiction and classic dramas, so I should retrieve by genre first.
Action: Retrieval[genre, 20]
Thought: The candidates look good; rank them by release year and keep the best ten.
Action: Rank[release_year, 10]
Action: Rank[None, 10]
Action: Retrieval[None, 30]
Action: Finish
Observation: <12>, Star Wars (1977), 0.93
Observation: <50>, Toy Story (1995), 0.81
You are a surrogate user who recommends movies, books and local businesses. Recommend ten items
the user will enjoy next, one per line, chosen only from the candidates, none from the history.
The user is a 24 year old student. History: ID 181, Return of the Jedi (1983), genre is
Action&Adventure&Romance&Sci-Fi&War, 5 stars. ID 1, Toy Story (1995), genre is Animation&Children's
&Comedy, 4 stars. ID 100, Fargo (1996), genre is Crime&Drama&Thriller, 5 stars.
Movies: The Godfather, Casablanca, Pulp Fiction, Schindler's List, The Silence of the Lambs,
Twelve Monkeys, Braveheart, Apollo 13, Independence Day, Contact, Titanic, Alien, Aliens, Heat,
Heathers, Blade Runner, The Empire Strikes Back, Raiders of the Lost Ark, Back to the Future.
Genres: Action, Adventure, Animation, Children's, Comedy, Crime, Documentary, Drama, Fantasy,
Film-Noir, Horror, Musical, Mystery, Romance, Sci-Fi, Thriller, War, Western, unknown.
Books, restaurants, cafes, bars, price, sales rank, categories, city, stars, popularity, actors,
directors, reputation, year, rating, history, candidates, retrieval, rank, finish, tool, memory.
0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 50 100 1990 1995 1996 1997 1998 2000 2010 2020 0.5 3.25
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.
"""
# Numbers as they appear in item ids, years and scores, so digits merge into common tokens.
BUILTIN_NUMBERS = " ".join(f"<{i}>" for i in range(2000)) + "\n" + " ".join(str(1900 + i) for i in range(130))


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 4096
    seed: int = 0


def default_dir() -> Path:
    return paths.models_dir() / NAME


def default_corpus() -> list[str]:
    """The built-in paragraph plus the repository's prompt files (sorted, so deterministic)."""
    texts = [BUILTIN_TEXT, BUILTIN_NUMBERS]
    from toolrec_local.resources import data_dir

    prompts = data_dir("prompts")
    if prompts.is_dir():
        for f in sorted(prompts.rglob("*")):
            if f.is_file() and f.suffix in {".txt", ".md", ".yaml", ".yml", ".json", ".jinja"}:
                texts.append(f.read_text(encoding="utf-8", errors="replace"))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (`tokenizers`), wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    lines = [line for text in texts for line in text.splitlines(keepends=True)]
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None, unk_token=None,
        clean_up_tokenization_spaces=False, model_max_length=4096,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny(out: Path | None = None, spec: TinySpec = TinySpec(), extra_texts: list[str] | None = None) -> Path:
    """Build the tiny model into `out` (default TOOLREC_HOME/models/tiny-random), atomically.
    Returns the folder. Same spec + same corpus -> byte-identical weights and tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own status line reports progress

    out = Path(out) if out else default_dir()
    texts = default_corpus() + list(extra_texts or [])
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    vocab = len(tokenizer)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False,
    )
    corpus_hash = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    with paths.atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        finish_tokenizer_config(tmp, CHATML_TEMPLATE)
        (tmp / "toolrec_tiny.json").write_text(json.dumps(
            {"name": NAME, "spec": spec.__dict__, "vocab": vocab, "corpus_sha256_16": corpus_hash,
             "corpus_texts": len(texts)}, indent=2) + "\n", encoding="utf-8")
    return out
