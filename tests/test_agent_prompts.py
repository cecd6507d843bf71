"""Prompt files: they load, render, and every domain's demonstrations are whole trajectories
of the authors' shape whose every turn is in the action grammar (the movie ones on real
ML-100K items); a demonstration item is never a candidate."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from types import SimpleNamespace

import pytest
from test_agent_support import CooccurrenceRetrieval

from toolrec_local.agent.actions import Finish, ParseFailure, Rank, Retrieval, parse_turn
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.loop import run_agent
from toolrec_local.agent.prompts import Renderer, load_prompts, prompts_dir
from toolrec_local.data.sources import KNOWN
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar

DOMAINS = ("movies", "books", "businesses")


@pytest.mark.parametrize("domain", DOMAINS)
def test_prompt_files_load(domain):
    p = load_prompts(domain)
    assert p.path == prompts_dir() / f"{domain}.yaml"
    names, ids = p.render("rank_system", with_names=True), p.render("rank_system", with_names=False)
    assert p.items in names and 'as "id, name"' in names and 'as "id"' in ids  # the answer format, once


def test_movie_demos_are_real_ml100k_trajectories_in_the_grammar(ml100k):
    ds = ml100k
    grammar = ActionGrammar(retrieval_attributes=tuple(ds.attributes), max_k=50)
    demos = load_prompts("movies").demos
    assert len(demos) >= 2
    used = set()
    for demo in demos:
        history = set()
        for raw, name, year, attrs, rating in demo["history"]:
            i = ds.item(raw)
            assert (ds.item_names[i], ds.item_years[i]) == (name, year)
            assert all(ds.attributes[a].of(i) == values for a, values in attrs.items())
            assert 1 <= rating <= 5
            history.add(i)
        steps = demo["steps"]
        assert isinstance(parse_turn(f"Thought: x\nAction: {steps[-1]['action']}", grammar.retrieval_attributes, strict=True)[1], Finish)
        for step in steps:
            turn = f"Thought: {step['thought']}\nAction: {step['action']}"
            assert conforms(grammar, turn), turn
            _, action = parse_turn(turn, grammar.retrieval_attributes, strict=True)
            assert not isinstance(action, ParseFailure)
            used.add(type(action).__name__)
            for raw, name, score in step.get("items", []):
                i = ds.item(raw)
                assert ds.item_names[i] == name and i not in history
                assert 0 < score < 1
            if not isinstance(action, Finish):
                assert step["k"] == action.k >= len(step["items"])
    assert used == {"Retrieval", "Rank", "Finish"}


def test_system_prompt_lists_the_real_attributes_and_demos(ml100k):
    ctx = AgentContext(ml100k, CooccurrenceRetrieval(ml100k), backend=None, config=AgentConfig(n_demos=1))
    system = ctx.renderer.system
    assert "genre, release_year, or None" in system
    assert "Example 1:" in system and "Example 2:" not in system
    assert "Star Wars (1977), genre Action&Adventure&Romance&Sci-Fi&War, rated 5/5" in system
    no_demos = AgentContext(ml100k, ctx.tool, None, AgentConfig(n_demos=0)).renderer.system
    assert "Example" not in no_demos and len(no_demos) < len(system) / 2


def test_user_head_has_profile_and_last_history_items(ml100k):
    ctx = AgentContext(ml100k, CooccurrenceRetrieval(ml100k), None, AgentConfig(history_len=3))
    history, _ = ml100k.split(0, "test")
    head = ctx.renderer.head(0, history)
    lines = head.splitlines()
    assert lines[0] == "The user: 24 years old, male, technician."
    assert lines[1] == "The user's last 3 movies, oldest first:"
    last = int(history[-1])
    rating = int(ml100k.ratings(0)[len(history) - 1])
    assert lines[-1] == f"{ml100k.item_ids[last]}, {ml100k.item_names[last]} ({ml100k.item_years[last]}), genre " \
                        f"{'&'.join(ml100k.attributes['genre'].of(last))}, rated {rating}/5"


@pytest.mark.parametrize("domain", ["books", "businesses"])
def test_other_domains_render_for_a_dataset_without_profile(ml100k, domain):
    ds = dataclasses.replace(ml100k, domain=domain, profile={})
    ctx = AgentContext(ds, CooccurrenceRetrieval(ml100k), None, AgentConfig())
    history, _ = ds.split(5, "test")
    task = ctx.renderer.task(ctx.renderer.head(5, history))
    noun = load_prompts(domain).items
    assert task.startswith(f"The user's last 10 {noun}") and task.endswith("next.")
    assert "Retrieval[attribute, K]" in ctx.renderer.system


def test_missing_prompt_file_is_a_user_error(tmp_path):
    with pytest.raises(ToolrecError, match="no prompts for domain"):
        load_prompts("movies", str(tmp_path))


@pytest.mark.parametrize("dataset", ["ml-100k", "ml-1m", "amazon-books", "yelp2018"])
def test_every_domains_demonstrations_render_and_parse_under_the_action_grammar(dataset):
    """The system prompt of each known dataset (its real attribute names) holds every
    demonstration, each Retrieval[None] -> Retrieval[attribute] -> Rank -> Finish, each turn
    in the real action grammar."""
    spec = KNOWN[dataset]
    attrs = tuple(spec.attributes)
    prompts = load_prompts(spec.domain)
    stub = SimpleNamespace(attributes=dict.fromkeys(attrs), domain=spec.domain)
    renderer = Renderer(stub, prompts, attrs, top_n=10, max_k=50, history_len=10, n_demos=len(prompts.demos),
                        show_items=10)
    grammar = ActionGrammar(retrieval_attributes=attrs, max_k=50)
    assert len(prompts.demos) >= 2
    for n, demo in enumerate(prompts.demos, 1):
        text = renderer.demo(demo)
        assert text and f"Example {n}:\n{text}" in renderer.system  # none left out for these attributes
        turns = re.findall(r"^Thought: .*\nAction: .*$", text, re.M)
        assert len(turns) == len(demo["steps"]) == 4
        actions = []
        for turn in turns:
            assert conforms(grammar, turn), turn
            thought, action = parse_turn(turn, attrs, strict=True)
            assert thought and not isinstance(action, ParseFailure)
            actions.append(action)
        first, second, rank, finish = actions
        assert first == Retrieval(None, first.k) and isinstance(second, Retrieval) and second.attribute in attrs
        assert isinstance(rank, Rank) and isinstance(finish, Finish)
        history = {row[0] for row in demo["history"]}
        retrieved = {row[0] for step in demo["steps"][:2] for row in step["items"]}
        assert all(row[0] not in history for step in demo["steps"][:3] for row in step["items"])
        assert {row[0] for row in demo["steps"][2]["items"]} <= retrieved  # Rank reorders what was gathered
        for row in demo["history"]:  # history lines carry the domain's attributes, as a live prompt does
            assert set(row[3]) == set(renderer.history_attributes)


@pytest.mark.parametrize("domain", ["books", "businesses"])
def test_placeholder_demo_ids_are_declared(domain):
    prompts = load_prompts(domain)
    ids = {row[0] for demo in prompts.demos for row in demo["history"]} | \
          {row[0] for demo in prompts.demos for step in demo["steps"] for row in step.get("items", [])}
    assert all(re.fullmatch(r"D\d{3}", i) for i in ids)
    header = prompts.path.read_text().split("\nitem:")[0]
    assert "placeholders" in header and "never" in header and "candidates" in header


class AsBooks:
    """The real retrieval tool under the book domain's attribute names (price, sales_rank)."""

    def __init__(self, tool):
        self.tool, self.attributes = tool, ["price", "sales_rank"]

    def retrieve(self, user, attribute, k, exclude=(), part="test"):
        return self.tool.retrieve(user, None if attribute is None else "genre", k, exclude, part)


def test_a_demo_item_is_never_a_candidate(ml100k):
    """The book demonstrations are in the prompt; a free-text final answer that names one of
    their items is refused (not a candidate), and every list the LLM may rank holds only items
    the tools returned for this user."""
    ds = dataclasses.replace(ml100k, domain="books", profile={})
    tool = AsBooks(CooccurrenceRetrieval(ml100k))
    demo_line = "D111, Klara and the Sun: A novel"

    def answer(messages, constraint, demo=True):
        lines = [line.rsplit(", ", 1)[0] for line in messages[-1]["content"].splitlines()
                 if re.fullmatch(r"\d+, .+, -?\d+\.\d{3}", line)]
        return "\n".join([demo_line] * demo + list(dict.fromkeys(lines))[:10])

    turns = ["Thought: a.\nAction: Retrieval[None, 20]", "Thought: b.\nAction: Retrieval[price, 20]",
             "Thought: c.\nAction: Finish", answer, lambda m, c: answer(m, c, demo=False)]
    backend = ScriptedBackend(turns)
    ctx = AgentContext(ds, tool, backend, AgentConfig(grammar=False))
    assert demo_line in ctx.renderer.system
    traj = asyncio.run(run_agent(ctx, 0))
    first, retry = backend.calls[-2].messages[-1]["content"], backend.calls[-1].messages[-1]["content"]
    assert "D111" not in first  # not offered
    assert f"'{demo_line}' is not in the catalogue" in retry  # named as wrong, then answered again
    assert traj.final_step.invalid_items == 1 and traj.final_step.retries == 1 and traj.final_step.repairs == 0
    gathered = set(traj.rounds[0].items) | set(traj.rounds[1].items)
    assert len(traj.final_items) == 10 and set(traj.final_items) <= gathered
