"""Chains: steps in order, outputs feeding later steps, every variable checked before anything runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prompttune.cli.app import app
from prompttune.core.errors import PromptTuneError
from prompttune.hard.chain import Chain, ChainError, backbone_generator

CHAIN = """
inputs: [article, question]
steps:
  - name: summary
    template: summarize
    with: {text: "{{ article }}"}
    max_new_tokens: 20
  - name: answer
    template:
      system: Answer from the summary.
      user: "Summary: {{ summary }}\\nQuestion: {{ question }}"
      answer: "Answer:"
output: answer
"""


def fake(step, values) -> str:
    """Deterministic stand-in for the model: names the step and the values it was given."""
    return f"{step.name}(" + ", ".join(f"{k}={values[k]}" for k in sorted(values)) + ")  "


def write(tmp_path, text: str, name: str = "chain.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_outputs_feed_later_steps(tmp_path):
    chain = Chain.load(write(tmp_path, CHAIN))
    result = chain.run({"article": "Ada wrote code.", "question": "Who?"}, fake)
    assert result["steps"]["summary"] == "summary(text=Ada wrote code.)"  # stripped
    assert result["output"] == "answer(question=Who?, summary=summary(text=Ada wrote code.))"


def test_steps_see_what_the_template_renders(tmp_path):
    seen = []

    def render(step, values):
        seen.append(step.template.hard().render(values))
        return "S"

    Chain.load(write(tmp_path, CHAIN)).run({"article": "A", "question": "Q"}, render)
    assert "at most 3 sentences" in seen[0] and seen[0].rstrip().endswith("Summary:")
    assert "Summary: S\nQuestion: Q" in seen[1]


def test_missing_input_names_file_and_variable(tmp_path):
    path = write(tmp_path, CHAIN)
    with pytest.raises(ChainError, match=f"{path}: missing input variable 'question'"):
        Chain.load(path).check({"article": "A"})


def test_variable_read_before_it_is_made_names_the_step(tmp_path):
    text = """
steps:
  - name: first
    template: {user: "{{ later }} {{ topic }}"}
  - name: later
    template: {user: "{{ topic }}"}
"""
    path = write(tmp_path, text)
    with pytest.raises(ChainError, match=r"step 1 \(first\): variable 'later' is neither an input.*reorder") as e:
        Chain.load(path).check({"topic": "t"})
    assert str(path) in str(e.value)


def test_unused_variable_is_an_error(tmp_path):
    text = "steps:\n  - name: one\n    template: {user: '{{ topic }}'}\n"
    with pytest.raises(ChainError, match="variable 'tpoic' is given but no step uses it"):
        Chain.load(write(tmp_path, text)).check({"topic": "t", "tpoic": "typo"})


def test_with_for_a_variable_the_template_does_not_use(tmp_path):
    text = "steps:\n  - name: one\n    template: qa\n    with: {context: '{{ x }}'}\n"
    with pytest.raises(ChainError, match=r"step 1 \(one\): 'with' sets variable 'context'"):
        Chain.load(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: []", "non-empty 'steps'"),
        ("steps:\n  - template: qa\n", "needs 'name' and 'template'"),
        ("steps:\n  - {name: a b, template: qa}\n", "must be an identifier"),
        ("steps:\n  - {name: a, template: qa}\n  - {name: a, template: qa}\n", "two steps are named 'a'"),
        ("steps:\n  - {name: a, template: no-such-template}\n", r"step 1 \(a\): template 'no-such-template'"),
        ("steps:\n  - {name: a, template: qa, retries: 3}\n", "unknown keys \\['retries'\\]"),
        ("steps:\n  - {name: a, template: qa}\noutput: b\n", "output 'b' is not a step name"),
        ("steps: [unclosed\n", "cannot be parsed"),
    ],
)
def test_bad_chain_files(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ChainError, match=message) as e:
        Chain.load(path)
    assert str(path) in str(e.value)


def test_template_files_are_found_next_to_the_chain(tmp_path):
    (tmp_path / "step.yaml").write_text("variables: [topic]\nuser: 'Tell me about {{ topic }}'\n")
    chain = Chain.load(write(tmp_path, "steps:\n  - {name: a, template: step.yaml}\n"))
    assert chain.run({"topic": "owls"}, fake)["output"] == "a(topic=owls)"


def test_json_chain_and_step_error_names_the_step(tmp_path):
    path = write(tmp_path, json.dumps({"steps": [{"name": "a", "template": {"user": "{{ topic }}"}}]}), "c.json")

    def failing(step, values):
        raise PromptTuneError("the model is on fire")

    with pytest.raises(ChainError, match=r"c.json, step 1 \(a\): the model is on fire"):
        Chain.load(path).run({"topic": "t"}, failing)


def test_chain_run_on_a_backbone(tmp_path, tiny_model_dir):
    """The real generator (zero-shot over the backbone) through the CLI; the tiny model's text is noise."""
    path = write(tmp_path, CHAIN)
    res = CliRunner().invoke(
        app,
        ["chain", "run", str(path), "--var", "article=a great movie", "--var", "question=why?"]
        + ["--model", str(tiny_model_dir), "--max-new-tokens", "3", "--json"],
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(result["steps"]) == {"summary", "answer"} and result["output"] == result["steps"]["answer"]
    gen = backbone_generator(str(tiny_model_dir), 2)
    chain = Chain.load(path)
    assert chain.run({"article": "x", "question": "y"}, gen) == chain.run({"article": "x", "question": "y"}, gen)


# --- findings of the new-user report (issue 18) -------------------------------------------------------
def test_unquoted_numbers_in_with_are_text(tmp_path, tiny_model_dir):
    """`with: {sentences: 2}` was refused with a message that did not say what to do."""
    path = write(
        tmp_path, CHAIN.replace('with: {text: "{{ article }}"}', 'with: {text: "{{ article }}", sentences: 2}')
    )
    seen = []

    def render(step, values):
        seen.append(step.template.hard().render(values))
        return "S."

    Chain.load(path).run({"article": "A", "question": "Q"}, render)
    assert "at most 2 sentences" in seen[0]
    res = CliRunner().invoke(
        app,
        ["chain", "run", str(path), "--var", "article=a great movie", "--var", "question=why?"]
        + ["--model", str(tiny_model_dir), "--max-new-tokens", "2", "--json"],
    )
    assert res.exit_code == 0, res.output
    bad = write(tmp_path, "steps:\n  - {name: a, template: summarize, with: {text: [1, 2]}}\n", "bad.yaml")
    with pytest.raises(ChainError, match=r"'with' text: give text or a number, not a list \(quote it: text: \"...\"\)"):
        Chain.load(bad)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_new_tokens: -3", r"step 1 \(a\): max_new_tokens is -3: give a whole number from 1 to"),
        ("max_new_tokens: 100000", "max_new_tokens is 100000"),
        ("temperature: -1", r"temperature is -1: give 0 \(greedy\) or more"),
        ("temperature: .nan", "temperature is nan"),
        ("stop: [1]", "'stop' must be a string or a list of strings"),
    ],
)
def test_bad_generation_settings_name_the_step(tmp_path, setting, message):
    path = write(tmp_path, f"steps:\n  - name: a\n    template: summarize\n    {setting}\n")
    with pytest.raises(ChainError, match=message) as e:
        Chain.load(path)
    assert str(path) in str(e.value)


def test_steps_end_at_a_sentence_end(tmp_path, tiny_model_dir, monkeypatch):
    """An answer step was cut mid-sentence at its 20-token limit: chain steps generate with finish_sentence
    (up to SENTENCE_GRACE_TOKENS more tokens to end the sentence, else cut back to the last sentence end)."""
    from prompttune.core.generate import Generator

    configs = []
    complete = Generator.complete

    def spy(gen, template, values, config=None):
        configs.append(config)
        return complete(gen, template, values, config)

    monkeypatch.setattr(Generator, "complete", spy)
    path = write(tmp_path, CHAIN)
    res = CliRunner().invoke(
        app,
        ["chain", "run", str(path), "--var", "article=a great movie", "--var", "question=why?"]
        + ["--model", str(tiny_model_dir), "--json"],
    )
    assert res.exit_code == 0, res.output
    assert [(c.max_new_tokens, c.finish_sentence) for c in configs] == [(20, True), (128, True)]
    code, message = cli_error(monkeypatch, ["chain", "run", str(path), "--max-new-tokens", "-3"] + VARS)
    assert code == 2 and "error: max_new_tokens (--max-new-tokens) is -3: give a whole number from 1 to" in message


VARS = ["--var", "article=a", "--var", "question=q"]


def cli_error(monkeypatch, args: list[str]) -> tuple[int, str]:
    """Run the CLI as a user does (errors printed as `error: ...`, exit code 2): (exit code, stderr)."""
    import contextlib
    import io

    from prompttune.cli.app import main

    monkeypatch.setattr("sys.argv", ["prompttune", *args])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as e:
        main()
    return e.value.code, " ".join(stderr.getvalue().split())


def test_an_empty_value_runs_or_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    """`--var article=` gave "cannot reshape tensor of 0 elements" when the row's text was empty."""
    args = ["--model", str(tiny_model_dir), "--max-new-tokens", "2", "--json"]
    spec = "{system: Summarize., user: '{{ article }}', chat: false}"
    path = write(tmp_path, f"steps:\n  - name: out\n    template: {spec}\n")
    res = CliRunner().invoke(app, ["chain", "run", str(path), "--var", "article=", *args])
    assert res.exit_code == 0, res.output
    path = write(tmp_path, "steps:\n  - name: out\n    template: {user: '{{ article }}', chat: false}\n", "empty.yaml")
    code, message = cli_error(monkeypatch, ["chain", "run", str(path), "--var", "article=", *args])
    assert code == 2 and f"error: {path}, step 1 (out): generate: the prompt is empty" in message
