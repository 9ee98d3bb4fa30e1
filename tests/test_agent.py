"""The agent runtime: a ReAct loop over a deterministic fake model, real tools, and stop strings in generation."""

from __future__ import annotations

import pytest


def test_generation_stops_before_a_stop_string(tiny_backbone):
    from prompttune.core.generate import GenerationConfig, Generator

    gen, config = Generator(tiny_backbone), GenerationConfig(max_new_tokens=12)
    template = "Q: {{ text }}\nA: [label]"
    free = gen.complete(template, {"text": "the cat"}, config)
    assert len(free) > 4
    stop = free[3:5]
    cut = gen.complete(template, {"text": "the cat"}, config.replace(stop=(stop, "never appears")))
    assert cut == free[: free.find(stop)]
    assert gen.complete(template, {"text": "the cat"}, config.replace(stop=("never appears",))) == free


# --- the loop, over a scripted model ---------------------------------------------------------------
class ScriptedModel:
    """Replies with the given outputs in turn and records what it was shown."""

    def __init__(self, *outputs: str):
        self.outputs = list(outputs)
        self.calls: list[dict] = []

    def complete(self, fields, stop, examples=()):
        self.calls.append({**fields, "stop": tuple(stop), "examples": list(examples)})
        return self.outputs[min(len(self.calls), len(self.outputs)) - 1]


def make_agent(*outputs, tools=("calculator",), max_steps=6, examples=True):
    from prompttune.hard.agent import Agent

    model = ScriptedModel(*outputs)
    return Agent(model, tools=list(tools), max_steps=max_steps, examples=examples), model


def test_tool_is_called_its_observation_fed_back_and_the_final_answer_parsed():
    agent, model = make_agent(
        " I should multiply.\nAction: calculator\nAction Input: 17 * 23\n",
        " I now know the final answer\nFinal Answer: 391",
    )
    result = agent.run("What is 17 * 23?")
    assert result.answer == "391" and result.stopped == "final_answer"
    assert [s.kind for s in result.steps] == ["action", "final"]
    assert result.steps[0].action == "calculator" and result.steps[0].observation == "391"
    assert model.calls[0]["scratchpad"] == "" and model.calls[0]["stop"] == ("Observation:",)
    assert "calculator: evaluates arithmetic" in model.calls[0]["tools"]
    assert model.calls[1]["scratchpad"] == (
        "Thought: I should multiply.\nAction: calculator\nAction Input: 17 * 23\nObservation: 391\n"
    )
    agent, model = make_agent("Action: calculator\nAction Input: 1 + 1\n\nI will wait.", "Final Answer: 2")
    agent.run("1 + 1?")
    assert model.calls[1]["scratchpad"] == "Thought: Action: calculator\nAction Input: 1 + 1\nObservation: 2\n"
    trace = result.trace()
    assert "Action: calculator\nAction Input: 17 * 23\nObservation: 391" in trace and "Final Answer: 391" in trace


def test_an_invented_observation_is_cut_off_and_the_real_one_used():
    agent, model = make_agent(
        "Action: calculator\nAction Input: 2 + 2\nObservation: 5\nThought: done\nFinal Answer: 5",
        "Final Answer: 4",
    )
    result = agent.run("2 + 2?")
    assert result.steps[0].observation == "4" and result.answer == "4"
    assert "Observation: 5" not in model.calls[1]["scratchpad"]


def test_step_limit_gives_a_clear_result():
    agent, model = make_agent(*(f"Action: calculator\nAction Input: 1 + {i}" for i in range(5)), max_steps=3)
    result = agent.run("loop forever")
    assert result.answer is None and result.stopped == "max_steps" and len(model.calls) == 3
    assert "no final answer within 3 steps" in result.message
    assert result.trace().endswith("Stopped: no final answer within 3 steps (the step limit); see the trace.")


def test_a_repeated_action_stops_the_run_without_running_it_again():
    calls = []
    agent, model = make_agent("Action: calculator\nAction Input: 2 +", "Action: calculator\nAction Input:  2  +")
    tool = agent.tools["calculator"]
    agent.add_tool(lambda text: calls.append(text) or tool(text), name="calculator", description=tool.description)
    result = agent.run("2 + 2?")
    assert result.stopped == "repeated_action" and result.answer is None and result.repeated == 1
    assert len(model.calls) == 2 and calls == ["2 +"]  # the repeat is not run again
    assert result.steps[1].observation is None
    assert result.message.startswith("no final answer: step 2 repeated step 1 (calculator with input '2  +')")
    assert result.trace().count("Stopped:") == 1 and result.trace().endswith("see the trace.")
    assert result.to_dict()["message"] == result.message
    # the same unparsable reply twice stops too; different replies go on
    agent, model = make_agent("I think it is four", "I think it is four", "Final Answer: 4")
    assert agent.run("2 + 2?").stopped == "repeated_action" and len(model.calls) == 2
    agent, _ = make_agent(
        "Action: calculator\nAction Input: 2 +", "Action: calculator\nAction Input: 2 + 2", "Final Answer: 4"
    )
    assert agent.run("2 + 2?").answer == "4"


def test_tool_errors_show_no_expression_to_copy():
    """The default decoder copied the example expression of an error message into its next calls."""
    import re

    agent, _ = make_agent(
        "Action: calculator\nAction Input: 2 +",
        "Action: calculator\nAction Input: ''",
        "Action: calculator\nAction Input: x + 1",
        "Final Answer: 4",
    )
    result = agent.run("2 + 2?")
    errors = [s.observation for s in result.steps[:3]]
    assert all(e.startswith("Error: calculator:") for e in errors)
    for error in errors:  # no arithmetic except the model's own input, quoted
        assert not re.search(r"\d\s*[-+*/]\s*[(\d]", error.replace("'2 +'", "")), error


def test_unparsable_output_is_answered_with_the_format_and_counts_as_a_step():
    agent, model = make_agent("I think it is four", "Action: calculator", "Action: 2 + 2 = 4", "Final Answer: 4")
    result = agent.run("2 + 2?")
    assert [s.kind for s in result.steps] == ["format_error"] * 3 + ["final"]
    assert "Invalid format" in result.steps[0].observation and "Action: calculator\n" in result.steps[0].observation
    assert "needs an 'Action Input" in result.steps[1].observation
    assert "'2 + 2 = 4' is not a tool" in result.steps[2].observation
    assert "Observation: Invalid format" in model.calls[1]["scratchpad"]
    assert result.answer == "4"


def test_the_model_sees_a_worked_example_with_the_tools_real_result():
    agent, model = make_agent("Final Answer: 1")
    agent.run("1?")
    [example] = model.calls[0]["examples"]
    assert example["question"] == "What is 12 * (3 + 4)?"
    assert "Action: calculator\nAction Input: 12 * (3 + 4)\nObservation: 84\n" in example["trace"]
    assert example["trace"].endswith("Final Answer: 84")
    agent, model = make_agent("Final Answer: 1", examples=False)
    agent.run("1?")
    assert model.calls[0]["examples"] == []


def test_examples_reach_the_prompt_as_earlier_turns(long_model_dir, monkeypatch):
    from prompttune import Backbone
    from prompttune.core.generate import Generator
    from prompttune.hard.agent import TemplateModel

    backbone = Backbone.load(str(long_model_dir))
    seen = []
    complete = Generator.complete

    def spy(gen, template, values, config=None):
        seen.append((template.render(values, backbone.tokenizer), config))
        return complete(gen, template, values, config)

    monkeypatch.setattr(Generator, "complete", spy)
    fields = {"question": "2 + 2?", "tools": "calculator: math", "scratchpad": "Thought: x\nObservation: 4\n"}
    example = {"question": "What is 1 + 1?", "trace": " Final Answer: 2"}
    TemplateModel(backbone, max_new_tokens=2).complete(fields, ["Observation:"], [example])
    prompt, config = seen[0]
    assert prompt.index("What is 1 + 1?") < prompt.index("Thought: Final Answer: 2") < prompt.index("2 + 2?")
    assert prompt.endswith("Thought: x\nObservation: 4\nThought:")
    assert config.stop == ("Observation:",) and config.max_new_tokens == 2


def test_a_tool_written_as_a_call_is_run():
    agent, _ = make_agent("Action: calculator[6 * 7]", "Action: calculator(1 + 1)", "Final Answer: 42")
    result = agent.run("6 * 7?")
    assert [(s.kind, s.action_input, s.observation) for s in result.steps[:2]] == [
        ("action", "6 * 7", "42"),
        ("action", "1 + 1", "2"),
    ]


def test_unknown_tool_and_tool_errors_become_observations():
    agent, _ = make_agent(
        "Action: browser\nAction Input: x",
        "Action: calculator\nAction Input: __import__('os').system('ls')",
        "Action: calculator\nAction Input: 1 / 0",
        "Final Answer: gave up",
    )
    result = agent.run("anything")
    obs = [s.observation for s in result.steps[:3]]
    assert obs[0] == "Error: there is no tool 'browser'; use one of: calculator."
    assert obs[1].startswith("Error: calculator:") and "not allowed" in obs[1]
    assert obs[2] == "Error: calculator: division by zero."
    assert result.answer == "gave up"


def test_user_functions_register_by_decorator_and_by_list():
    from prompttune.hard.agent import Agent

    def shout(text: str) -> str:
        """upper-cases text. Input: any text."""
        return text.upper()

    model = ScriptedModel(
        'Action: shout\nAction Input: "hi there"', "Action: flaky\nAction Input: x", "Final Answer: ok"
    )
    agent = Agent(model, tools=[shout])

    @agent.tool(name="flaky")
    def broken(text: str) -> str:
        raise RuntimeError("backend down")

    result = agent.run("shout hi")
    assert result.steps[0].observation == "HI THERE"
    assert result.steps[1].observation == "Error: tool flaky failed (RuntimeError: backend down)."
    assert "shout: upper-cases text. Input: any text." in model.calls[0]["tools"]
    assert "flaky: " in model.calls[0]["tools"]


def test_bad_agent_setup_is_a_clear_error():
    from prompttune.core.errors import DataError, PromptTuneError
    from prompttune.hard.agent import Agent

    with pytest.raises(DataError, match="--tool browser: no such tool; available: calculator, search"):
        Agent(ScriptedModel(""), tools=["browser"])
    with pytest.raises(PromptTuneError, match="--tool search needs --index"):
        Agent(ScriptedModel(""), tools=["search"])
    with pytest.raises(DataError, match="--max-steps 0"):
        Agent(ScriptedModel(""), tools=["calculator"], max_steps=0)


# --- the calculator ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("17 * 23", "391"),
        ("(2 + 3) ** 2 - 7 // 2 % 2", "24"),
        ("-3 + +4", "1"),
        ("10 / 4", "2.5"),
        ("sqrt(16) + max(1, 2)", "6"),
        ("2^10 =", "1024"),
        ("'1,000 + 5'", "1005"),
        ("round(pi, 2)", "3.14"),
    ],
)
def test_calculator_computes_arithmetic(expr, want):
    from prompttune.hard.tools import calculator

    assert calculator(expr) == want


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("__import__('os')", "not allowed"),
        ("().__class__.__bases__", "not allowed"),
        ("open('x')", "not allowed"),
        ("[x for x in (1, 2)]", "not allowed"),
        ("'a' * 3", "not allowed"),
        ("True + 1", "not allowed"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 100000", "too large"),
        ("10 ** 5000", "too large"),
        ("2 ** 4000 * 2 ** 4000", "too large"),
        ("exp(1000)", "math range error"),
        ("sqrt(-1)", "math domain error"),
        ("1 / 0", "division by zero"),
        ("2 +", "not arithmetic"),
        ("", "empty"),
        ("1 + " * 300 + "1", "longer than"),
        ("round(1, -10**18)", "round to -1000000000000000000 digits is out of range"),
        ("round(1, -10**7)", "out of range"),
        ("round(1.5, 10**18)", "out of range"),
        ("round(2, 0.5)", "must be a whole number"),
        ("sqrt(1, 2)", "takes exactly one argument"),
    ],
)
def test_calculator_refuses_everything_else(expr, why):
    from prompttune.hard.tools import ToolError, calculate

    with pytest.raises(ToolError, match=why):
        calculate(expr)


# --- the runtime over a real (tiny, random) decoder and the command line ------------------------------
def test_cli_agent_over_a_random_model_ends_cleanly_at_the_step_limit(long_model_dir):
    import json

    from typer.testing import CliRunner

    from prompttune import cli

    args = ["agent", "What is 2 + 2?", "--tool", "calculator", "--model", str(long_model_dir)]
    result = CliRunner().invoke(cli.app, [*args, "--max-steps", "2", "--max-new-tokens", "4", "--json"])
    trace = json.loads(result.stdout.strip().splitlines()[-1])
    assert trace["stopped"] in ("max_steps", "final_answer", "repeated_action") and 1 <= len(trace["steps"]) <= 2
    assert result.exit_code == (0 if trace["stopped"] == "final_answer" else 1), result.output
    if trace["stopped"] == "max_steps":
        assert trace["answer"] is None and all(s["observation"] for s in trace["steps"])
    result = CliRunner().invoke(cli.app, [*args, "--max-steps", "1", "--max-new-tokens", "4"])
    assert result.stdout.startswith("Question: What is 2 + 2?")
    assert result.exit_code == 1 and result.stdout.count("no final answer") == 1  # said once, in the trace
    assert "\nAnswer: " not in result.stdout


def test_cli_agent_stops_a_repeated_call_and_exits_1(long_model_dir, monkeypatch):
    """The user report: the same failing calculator call six times, exit 0, the no-answer message twice."""
    import json

    from typer.testing import CliRunner

    from prompttune import cli
    from prompttune.hard.agent import TemplateModel

    replies = []

    def stuck(self, fields, stop, examples=()):
        replies.append(fields["scratchpad"])
        return " I should compute it.\nAction: calculator\nAction Input: 17 x 23"

    monkeypatch.setattr(TemplateModel, "complete", stuck)
    args = ["agent", "What is 17 * 23?", "--tool", "calculator", "--model", str(long_model_dir)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 1 and len(replies) == 2, result.output
    assert result.stdout.count("no final answer") == 1 and "\nAnswer: " not in result.stdout
    assert "Stopped: no final answer: step 2 repeated step 1 (calculator with input '17 x 23')" in result.stdout
    assert "Observation: Error: calculator:" in replies[1] and "12 * (3 + 4)" not in replies[1]
    result = CliRunner().invoke(cli.app, [*args, "--json"])
    trace = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 1 and trace["stopped"] == "repeated_action" and len(trace["steps"]) == 2


def test_cli_agent_refuses_search_without_an_index(monkeypatch, capsys):
    from prompttune import cli

    monkeypatch.setattr("sys.argv", ["prompttune", "agent", "q", "--tool", "search"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "--tool search needs --index" in capsys.readouterr().err
