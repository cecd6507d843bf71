"""The action and item-list readers: canonical round trips, tolerance, and no crash on any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolrec_local.agent.actions import (
    RANK_ATTR_RE, Finish, ParseFailure, Rank, Retrieval, format_action, format_turn, parse_turn,
)
from toolrec_local.agent.itemlists import ItemReader, normalise_name
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar, ItemListGrammar

ATTRS = ("genre", "release_year")
MAX_K = 50
GRAMMAR = ActionGrammar(retrieval_attributes=ATTRS, max_k=MAX_K)

ks = st.integers(min_value=1, max_value=MAX_K)
rank_attrs = st.one_of(st.none(), st.from_regex(RANK_ATTR_RE, fullmatch=True))
actions = st.one_of(
    st.builds(Retrieval, st.sampled_from((None, *ATTRS)), ks),
    st.builds(Rank, rank_attrs, ks),
    st.just(Finish()),
)
thoughts = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=60).filter(
    lambda t: t.strip() and "\x85" not in t
)


@given(actions, thoughts)
@settings(max_examples=300, deadline=None)
def test_canonical_turn_round_trips_and_is_in_the_grammar(action, thought):
    text = format_turn(thought, action)
    assert conforms(GRAMMAR, text), text
    for strict in (True, False):
        _, parsed = parse_turn(text, ATTRS, strict=strict)
        assert parsed == action, (strict, text, parsed)


@given(actions, st.sampled_from(["", " ", "  "]), st.integers(0, 9), st.sampled_from(["", " Done.", "\nObservation: x", " (then rank later)"]),
       st.booleans())
@settings(max_examples=300, deadline=None)
def test_tolerant_reader_accepts_noisy_spellings(action, pad, number, trailer, lower):
    canonical = format_action(action)
    if isinstance(action, Finish):
        noisy = "finish" if lower else "FINISH"
    else:
        tool = canonical.split("[")[0]
        tool = tool.lower() if lower else tool.upper()
        noisy = f"{tool}{pad}[{pad}{action.attribute or 'none'}{pad},{pad}{action.k}{pad}]"
    text = f"Thought {number}: fine\nAction {number}:{pad}{noisy}{trailer}"
    _, parsed = parse_turn(text, ATTRS, strict=False)
    assert parsed == action, text


@given(st.text(max_size=300))
@settings(max_examples=500, deadline=None)
def test_readers_never_crash(text):
    for strict in (True, False):
        thought, action = parse_turn(text, ATTRS, strict=strict)
        assert isinstance(thought, str)
        assert isinstance(action, (Retrieval, Rank, Finish, ParseFailure))
    names = ["", "Toy Story", "Richard III", "The Matrix"]
    reader = ItemReader([1, 2, 3], ["0", "1", "10", "100"], names, {"1": 1, "10": 2, "100": 3})
    for entry in reader.read(text):
        assert 0 <= entry.item <= 3


@pytest.mark.parametrize("text, expected", [
    ("Thought: hm\nAction 2: retrieval[genre,20]", Retrieval("genre", 20)),
    ("Thought 1: x\nAction 1:   Retrieval [ Genre , 7 ]  and then I will rank", Retrieval("genre", 7)),
    ("Action: Rank[actors, 5]", Rank("actors", 5)),
    ("Thought: I could rank, but\nAction: Finish.", Finish()),
    ("Thought: retrieve with no K\nAction: Retrieval[release_year]", Retrieval("release_year", 20)),
    ("Action: rank[None, 3]", Rank(None, 3)),
])
def test_tolerant_examples(text, expected):
    assert parse_turn(text, ATTRS, strict=False)[1] == expected


def test_unlabelled_thought_before_the_action_is_kept():
    thought, action = parse_turn("The user likes sci-fi.\nAction: Finish", ATTRS, strict=False)
    assert (thought, action) == ("The user likes sci-fi.", Finish())


@pytest.mark.parametrize("text", [
    "Thought: x\nAction: Retrieval[colour, 5]",  # not a dataset attribute
    "Thought: x\nAction: Search[genre, 5]",
    "I do not know.",
    "Thought: x\nAction: Rank",
])
def test_tolerant_reader_names_what_is_wrong(text):
    _, action = parse_turn(text, ATTRS, strict=False)
    assert isinstance(action, ParseFailure) and action.message


@pytest.mark.parametrize("text", [
    "Thought: x\nAction: retrieval[genre, 5]",  # case
    "Thought: x\nAction: Retrieval[genre,5]",  # spacing
    "Thought: x\nAction 1: Finish",  # numbering
    "Action: Finish",  # no thought
    "Thought: x\nAction: Finish and more",  # trailing text
])
def test_strict_reader_accepts_only_the_grammar_format(text):
    assert isinstance(parse_turn(text, ATTRS, strict=True)[1], ParseFailure)


def test_out_of_range_k_is_read_and_left_to_the_loop_to_clamp():
    assert parse_turn("Action: Retrieval[genre, 500]", ATTRS, strict=False)[1] == Retrieval("genre", 500)
    assert parse_turn("Action: Retrieval[genre, 0]", ATTRS, strict=False)[1] == Retrieval("genre", 0)


# ---- item lists ----------------------------------------------------------------------------
IDS = ["", "1", "50", "181", "258", "7"]
NAMES = ["", "Toy Story", "Star Wars", "Return of the Jedi", "Contact", "Twelve Monkeys"]
CATALOGUE = {raw: i for i, raw in enumerate(IDS) if i}


def reader(candidates=(1, 2, 3, 4)):
    return ItemReader(list(candidates), IDS, NAMES, CATALOGUE)


def test_grammar_answers_read_exactly():
    r = reader()
    text = "181, Return of the Jedi\n1, Toy Story"
    assert r.exact(text, True, 2)
    assert conforms(ItemListGrammar(r.options(True), 2), text)
    assert [e.item for e in r.read(text)] == [3, 1]
    assert not r.exact("181, Return of the Jedi\n181, Return of the Jedi", True, 2)
    assert r.exact("50\n258", False, 2)


@pytest.mark.parametrize("line, item", [
    ("1. Star Wars (1977)", 2),
    ("- 181, Return of the Jedi", 3),
    ("ID 258: Contact", 4),
    ("2) toy story", 1),
    ("Return Of The Jedi, 0.93", 3),
    ("50", 2),
    ("7, Twelve Monkeys", 5),  # in the catalogue but not a candidate: kept, memory rejects it
    ("999, Nothing", 0),  # an item line naming nothing: kept as unknown
    ("B00X4WHP5E, Some Book", 0),  # an id with letters (ASIN, Yelp, a demonstration's D111): kept as unknown
])
def test_tolerant_item_lines(line, item):
    entries = reader().read("Here are the movies:\n" + line)
    assert [e.item for e in entries] == [item]


def test_chatter_with_commas_is_not_an_item_line():
    assert reader().read("Note, these are sorted:\nSure, here you go") == []


def test_normalised_names():
    assert normalise_name("Matrix, The") == normalise_name("the matrix") == "matrix"
