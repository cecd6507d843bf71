"""Prompt files: they load, render, and their demonstrations are real ML-100K trajectories
whose every turn is in the action grammar."""

from __future__ import annotations

import dataclasses

import pytest
from test_agent_support import CooccurrenceRetrieval

from toolrec_local.agent.actions import Finish, ParseFailure, parse_turn
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.prompts import load_prompts, prompts_dir
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar

DOMAINS = ("movies", "books", "businesses")


@pytest.mark.parametrize("domain", DOMAINS)
def test_prompt_files_load(domain):
    p = load_prompts(domain)
    assert p.path == prompts_dir() / f"{domain}.yaml"
    assert p.items in p.render("rank_system")


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
