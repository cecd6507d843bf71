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
    assert len(demos) == 3
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
            for row in step.get("items", []):  # Retrieval: [id, name, score]; Rank: [id, name], best first
                i = ds.item(row[0])
                assert ds.item_names[i] == row[1] and i not in history
                assert len(row) == 2 if isinstance(action, Rank) else 0 < row[2] < 1
            if not isinstance(action, Finish):
                assert step["k"] == action.k >= len(step["items"])
    assert used == {"Retrieval", "Rank", "Finish"}


def test_system_prompt_lists_the_real_attributes_and_demos(ml100k):
    ctx = AgentContext(ml100k, CooccurrenceRetrieval(ml100k), backend=None, config=AgentConfig(demos=1))
    system = ctx.renderer.system
    assert "genre, release_year, or None" in system
    assert "Example 1:" in system and "Example 2:" not in system
    assert "Star Wars (1977), genre Action&Adventure&Romance&Sci-Fi&War, rated 5/5" in system
    no_demos = AgentContext(ml100k, ctx.tool, None, AgentConfig(demos=0)).renderer.system
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
    # no demonstration of these domains fits ML-100K's attributes (test_no_demonstration_fits...)
    ctx = AgentContext(ds, CooccurrenceRetrieval(ml100k), None, AgentConfig(demos=0))
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
                        show_items=None)
    grammar = ActionGrammar(retrieval_attributes=attrs, max_k=50)
    assert len(prompts.demos) == 3 and renderer.demos_left_out is None
    assert renderer.system and renderer.demos_left_out == 0
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


# ---- the authors' demonstration shape, and --demos ---------------------------------------------
@pytest.mark.parametrize("domain", DOMAINS)
def test_the_third_demonstration_is_the_authors_small_k_top_up(domain):
    """Like the authors' (dataset/prompts/*_ICL.json): a "Top 2-4" task, small K, every list
    shown whole, and a Rank that keeps fewer items than the task asks for, so that Finish
    tops the list up from what was gathered."""
    demo = load_prompts(domain).demos[2]
    assert 2 <= demo["n"] <= 4
    *tools, finish = demo["steps"]
    assert all(step["k"] == len(step["items"]) <= 8 for step in tools)
    assert tools[2]["action"].startswith("Rank[") and tools[2]["k"] < demo["n"]
    assert finish["action"] == "Finish" and "fill the rest" in finish["thought"]


def test_demos_selects_how_many_demonstrations_the_agent_sees(ml100k):
    tool = CooccurrenceRetrieval(ml100k)
    assert AgentConfig().demos == 3  # the authors' count
    for n in range(4):
        system = AgentContext(ml100k, tool, None, AgentConfig(demos=n)).renderer.system
        assert all((f"Example {m}:" in system) == (m <= n) for m in range(1, 5))
    third = AgentContext(ml100k, tool, None, AgentConfig()).renderer.system.split("Example 3:\n")[1]
    assert "Recommend the top 4 movies" in third  # the demonstration's own task, not the run's N
    assert "Observation: The top 2 movies ranked by actors, best first:\n1. 781, French Kiss\n2. 255, " in third


# ---- malformed prompt files: one clear error, naming the file and the key ---------------------
def prompt_file(tmp_path, edit, domain="movies"):
    """A copy of the domain's prompt file changed by `edit(data)` (or replaced by its text)."""
    import yaml

    data = yaml.safe_load((prompts_dir() / f"{domain}.yaml").read_text())
    out = edit(data) if callable(edit) else edit
    (tmp_path / f"{domain}.yaml").write_text(out if isinstance(out, str) else yaml.safe_dump(data, sort_keys=False))
    return str(tmp_path)


def context_with(ml100k, folder, **config):
    return AgentContext(ml100k, CooccurrenceRetrieval(ml100k), None, AgentConfig(prompts_dir=folder, **config))


@pytest.mark.parametrize("text, message", [("", "movies.yaml: empty"), ("# nothing\n", "movies.yaml: empty"),
                                           ("- a\n- b\n", "movies.yaml: a list, not a mapping")])
def test_an_empty_prompt_file_is_one_clear_error(ml100k, tmp_path, text, message):
    with pytest.raises(ToolrecError, match=message) as err:
        context_with(ml100k, prompt_file(tmp_path, text))
    assert str(tmp_path) in err.value.message and err.value.hint


def _drop_items(data):
    del data["demos"][1]["steps"][0]["items"]


def _short_row(data):
    data["demos"][0]["history"][2] = data["demos"][0]["history"][2][:3]


def _no_thought(data):
    del data["demos"][2]["steps"][1]["thought"]


@pytest.mark.parametrize("edit, key", [
    (_drop_items, r"demos\[1\]\.steps\[0\] \(Retrieval\[None, 20\]\) has no 'items'"),
    (_short_row, r"demos\[0\]\.history\[2\] is \['50', 'Star Wars', '1977'\], not \[id, name, year"),
    (_no_thought, r"demos\[2\]\.steps\[1\] needs a 'thought' and an 'action'"),
])
def test_a_malformed_demonstration_names_the_file_and_the_key(ml100k, tmp_path, edit, key):
    with pytest.raises(ToolrecError, match=key) as err:
        context_with(ml100k, prompt_file(tmp_path, edit))
    assert err.value.message.startswith(f"{tmp_path}/movies.yaml: ")


class OnlyAttributes:
    """The co-occurrence tool under other retrieval attribute names (a custom dataset)."""

    def __init__(self, tool, attributes):
        self.tool, self.attributes = tool, list(attributes)

    def retrieve(self, user, attribute, k, exclude=(), part="test"):
        return self.tool.retrieve(user, None, k, exclude, part)


def test_demonstrations_that_do_not_fit_the_attributes_are_counted_not_dropped_silently(ml100k, capsys):
    """Movies' second demonstration retrieves by release_year: with only a genre tool it is
    left out, and a warning says how many; with no attribute that fits, none is left: an error,
    unless --demos 0 (the ranking baselines never make the agent's system message)."""
    from toolrec_local.agent.prompts import _warn

    _warn.cache_clear()
    base = CooccurrenceRetrieval(ml100k)
    r = AgentContext(ml100k, OnlyAttributes(base, ["genre"]), None, AgentConfig()).renderer
    assert "Example 2:" in r.system and "Example 3:" not in r.system and r.demos_left_out == 1
    err = capsys.readouterr().err
    assert "warning:" in err and "1 of 3 demonstrations left out" in err and "(genre)" in err
    assert "Example 1:" in r.system_with(1) and "Retrieval[release_year" not in r.system
    custom = AgentContext(ml100k, OnlyAttributes(base, ["colour"]), None, AgentConfig())
    with pytest.raises(ToolrecError, match="none of the 3 demonstrations asked for fits .* retrieval attributes "
                                           r"\(colour\)") as e:
        custom.renderer.system
    assert "--demos 0" in e.value.hint
    assert "Example" not in AgentContext(ml100k, custom.tool, None, AgentConfig(demos=0)).renderer.system
    AgentContext(ml100k, OnlyAttributes(base, ["genre"]), None, AgentConfig(demos=5)).renderer.system
    assert "has 3 demonstrations; 5 were asked for" in capsys.readouterr().err


def test_a_method_whose_prompt_is_missing_is_refused_not_run_on_the_rank_prompt(ml100k, tmp_path):
    from toolrec_local.agent.baselines import llm_rank
    from toolrec_local.agent.memory import ToolList

    def no_llmrank(data):
        del data["llmrank_user"]

    ctx = context_with(ml100k, prompt_file(tmp_path, no_llmrank))
    pairs = ctx.tool.retrieve(0, None, 20)
    lists = [ToolList(Retrieval(None, 20), [i for i, _ in pairs], [s for _, s in pairs])]
    with pytest.raises(ToolrecError, match="movies.yaml: no llmrank_user template") as err:
        asyncio.run(llm_rank(ctx, 0, lists, 10, style="llmrank"))
    assert "--method" in err.value.hint
    ctx.renderer.require_style("chatrec")  # the others are there


def test_refer_needs_the_repeated_list_template(ml100k, tmp_path):
    def no_same(data):
        del data["observation_same"]

    folder = prompt_file(tmp_path, no_same)
    with pytest.raises(ToolrecError, match="no observation_same template") as err:
        context_with(ml100k, folder)
    assert "--repeated-lists full" in err.value.hint
    context_with(ml100k, folder, repeated_lists="full")  # lists a repeated list again: needs none
