"""The labels the `score` ranker (`--rank-by score`) shows the candidates under, and the check
that each is one token for the model: the answer is one label under a choice constraint, read
from one token's log-probabilities, so a label the tokenizer splits could not be scored.

LlamaRec's verbalizer: the answer's first token's log-probability of each label is the
candidate's score. 52 labels (A-Z, a-z): every tokenizer the project ships encodes each ASCII
letter as one token at the start of an assistant reply (tests/test_rank_strategies.py).
"""

from __future__ import annotations

import string

from toolrec_local.errors import ToolrecError

LABELS = tuple(string.ascii_uppercase + string.ascii_lowercase)


def check_labels(backend, labels=LABELS) -> None:
    """Refuse (ToolrecError) unless every label is one token for `backend`'s model. A backend
    says through `label_token_counts(labels) -> {label: tokens}`; one that cannot return
    log-probabilities under a constraint says so by raising; one without the method (the
    tests' scripted backends) is taken at its word."""
    count = getattr(backend, "label_token_counts", None)
    if count is None:
        return
    counts = count(tuple(labels))
    split = [label for label in labels if counts.get(label) != 1]
    if split:
        raise ToolrecError(
            f"--rank-by score: the labels {', '.join(repr(x) for x in split[:8])}"
            f"{' ...' if len(split) > 8 else ''} are not single tokens for {backend.name} "
            f"(token counts: {', '.join(f'{x}={counts.get(x)}' for x in split[:8])})",
            "use --rank-by generate with this model",
        )


def label_scores(logprobs: dict[str, float] | None, labels) -> dict[str, float]:
    """Each label's log-probability in a reply's top log-probabilities (-inf when missing). A
    token's text may carry the tokenizer's leading space marker; the best spelling counts."""
    if logprobs is None:
        raise ToolrecError("the backend returned no log-probabilities for a score ranking",
                           "use a backend that returns them (vllm, local), or --rank-by generate")
    best = dict.fromkeys(labels, float("-inf"))
    for token, value in logprobs.items():
        label = token.strip().lstrip("\u2581\u0120")
        if label in best and value is not None:
            best[label] = max(best[label], float(value))
    return best


def answer_tokens(tokenizer, labels=LABELS) -> dict[str, list[int]]:
    """The token ids each label adds where the answer starts: after the chat template's
    generation prompt (a label could merge with the template's last characters, or take a
    leading-space marker, there and not alone). A tokenizer without a chat template: alone.
    A label that merged with the prompt's end gives the whole text's ids (never one token)."""
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if getattr(tokenizer, "chat_template", None) is None:
        return {label: ids(label) for label in labels}
    start = tokenizer.apply_chat_template([{"role": "user", "content": "Which one?"}], tokenize=False,
                                          add_generation_prompt=True)
    base = ids(start)
    out = {}
    for label in labels:
        full = ids(start + label)
        out[label] = full[len(base):] if full[: len(base)] == base else full
    return out


def tokenizer_counts(tokenizer, labels=LABELS) -> dict[str, int]:
    """How many tokens each label adds where the answer starts (`answer_tokens`)."""
    return {label: len(ids) for label, ids in answer_tokens(tokenizer, labels).items()}
