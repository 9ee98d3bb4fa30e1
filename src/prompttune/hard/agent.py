"""A ReAct agent: the model thinks, calls a tool, reads its result, and repeats until it answers.

Each step the model continues the ``react`` template after "Thought:" and generation stops at
"Observation:", so the model never writes a tool's result itself. Its text is parsed as either

    ... Action: <tool name>\\nAction Input: <input>      -> the tool runs; its result is the Observation
    ... Final Answer: <answer>                           -> the run ends with that answer

Anything else is fed back as an Observation that restates the expected format, and counts as a step.
A run ends with a final answer, after ``max_steps`` model calls, or when the model repeats an earlier
step word for word (the same tool and input, or the same unparsable reply): a small model that
repeats itself once goes on repeating (the default decoder made one failing calculator call six times),
so the run stops there instead of spending the remaining steps.

    from prompttune.hard.agent import Agent, TemplateModel
    agent = Agent(TemplateModel(Backbone.load()), tools=["calculator"])
    @agent.tool
    def weather(city: str) -> str:
        "the weather in a city. Input: the city name."
        return "sunny"
    result = agent.run("What is 17 * 23?")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from prompttune.core.errors import DataError
from prompttune.hard.tools import Tool, ToolContext, ToolError, as_tool, build_tools

STOP = ("Observation:",)
FORMAT_HINT = (
    "Invalid format. Reply with either two lines 'Action: <one of {tools}>' and 'Action Input: <input>', "
    "or one line 'Final Answer: <the answer>'. For example:\nAction: {first}\nAction Input: <input>"
)
MAX_OBSERVATION_CHARS = 2000
_FINAL = re.compile(r"Final Answer\s*:\s*(.*)", re.S | re.I)
_ACTION = re.compile(r"Action\s*:\s*(.*?)[ \t]*\n?\s*Action Input\s*:[ \t]*(.*)", re.S | re.I)
_ACTION_ONLY = re.compile(r"Action\s*:\s*([^\n]*)", re.I)
_CALL_FORM = re.compile(r"(\w+)\s*[\[(](.*)[\])]$")


class LanguageModel(Protocol):
    """Continues the react template for the given fields; must stop before any of ``stop``.

    ``examples``: worked examples to show first, each {"question": ..., "trace": the text after "Thought:"}.
    """

    def complete(self, fields: dict[str, str], stop: Sequence[str], examples: Sequence[dict] = ()) -> str: ...


class TemplateModel:
    """A decoder backbone reading a template (``react`` by default) through the Generator.

    No repetition control: a ReAct step repeats its own format words (Action, Action Input) by design,
    and its outputs are short and cut at "Observation:".
    """

    def __init__(self, backbone, template: str = "react", max_new_tokens: int = 128):
        from prompttune.core.generate import GenerationConfig, Generator
        from prompttune.core.template import Template

        self.generator = Generator(backbone)
        self.template = Template.from_spec(template)
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, repetition_penalty=1.0, no_repeat_ngram_size=0)

    def complete(self, fields: dict[str, str], stop: Sequence[str], examples: Sequence[dict] = ()) -> str:
        # Variables with a default (the scratchpad) are bound, not passed as row fields.
        bound = {k: v for k, v in fields.items() if k not in self.template.variables}
        row = {k: v for k, v in fields.items() if k in self.template.variables}
        template = self.template.partial(**bound) if bound else self.template
        if examples:  # earlier user/assistant turns, through the template's few-shot demos
            demos = [{**fields, "scratchpad": "", "question": e["question"], "label": e["trace"]} for e in examples]
            template = template.with_demos(demos)
        return self.generator.complete(template, row, self.config.replace(stop=tuple(stop)))


@dataclass
class Step:
    output: str  # what the model wrote after "Thought:" (cut at the stop string)
    kind: str  # "action" | "final" | "format_error"
    thought: str = ""
    action: str | None = None
    action_input: str | None = None
    observation: str | None = None


@dataclass
class AgentResult:
    question: str
    answer: str | None  # None: no final answer (the step limit, or a repeated step)
    stopped: str  # "final_answer" | "max_steps" | "repeated_action"
    steps: list[Step] = field(default_factory=list)
    repeated: int | None = None  # stopped="repeated_action": the 1-based step the last step repeated

    @property
    def message(self) -> str:
        if self.answer is not None:
            return self.answer
        if self.stopped == "repeated_action":
            last = self.steps[-1]
            what = f"{last.action} with input {last.action_input!r}" if last.kind == "action" else "the same reply"
            return (
                f"no final answer: step {len(self.steps)} repeated step {self.repeated} ({what}), so the run "
                "stopped; see the trace."
            )
        return f"no final answer within {len(self.steps)} steps (the step limit); see the trace."

    def trace(self) -> str:
        """The run as Thought / Action / Action Input / Observation lines."""
        lines = [f"Question: {self.question}"]
        for s in self.steps:
            lines += [f"Thought: {s.thought}"] if s.thought else []
            if s.observation is None and s.kind != "final":  # the repeated step: not run again
                lines += [f"Action: {s.action}", f"Action Input: {s.action_input}"] if s.kind == "action" else []
            elif s.kind == "final":
                lines.append(f"Final Answer: {self.answer}")
            elif s.kind == "action":
                lines += [f"Action: {s.action}", f"Action Input: {s.action_input}", f"Observation: {s.observation}"]
            else:
                lines += [f"(unparsed output: {s.output.strip()!r})", f"Observation: {s.observation}"]
        if self.answer is None:
            lines.append(f"Stopped: {self.message}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "stopped": self.stopped,
            "message": self.message,
            "steps": [asdict(s) for s in self.steps],
        }


class Agent:
    def __init__(
        self,
        model: LanguageModel,
        tools: Sequence[Tool | Callable | str] = (),
        max_steps: int = 6,
        tool_context: ToolContext | None = None,
        examples: bool = True,
    ):
        """``examples``: show the model one worked example per tool that has one (the calculator does);
        with the 135M default decoder this is the difference between 0 and 3 of 5 arithmetic questions."""
        if max_steps < 1:
            raise DataError(f"--max-steps {max_steps}: give at least 1.")
        self.model = model
        self.max_steps = max_steps
        self.use_examples = examples
        self.tools: dict[str, Tool] = {}
        named = [t for t in tools if isinstance(t, str)]
        for t in build_tools(named, tool_context or ToolContext()) if named else []:
            self.add_tool(t)
        for t in tools:
            if not isinstance(t, str):
                self.add_tool(t)

    def add_tool(
        self,
        tool: Tool | Callable,
        name: str | None = None,
        description: str | None = None,
        example: tuple[str, str] | None = None,
    ) -> Tool:
        tool = as_tool(tool, name, description, example)
        self.tools[tool.name] = tool
        return tool

    def tool(
        self,
        func: Callable | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        example: tuple[str, str] | None = None,
    ):
        """Decorator: register a function of one string as a tool (``@agent.tool`` or ``@agent.tool(name=...)``).

        ``example``: (question, input) for a worked example shown to the model."""

        def register(f: Callable) -> Callable:
            self.add_tool(f, name, description, example)
            return f

        return register(func) if func is not None else register

    # --- the loop -----------------------------------------------------------------------------
    def run(self, question: str, progress: Callable[[Step], None] | None = None) -> AgentResult:
        if not question.strip():
            raise DataError("agent: the question is empty.")
        if not self.tools:
            raise DataError("agent: no tools; add one with --tool (calculator, search) or Agent(tools=[...]).")
        tools_text = "\n".join(t.line() for t in self.tools.values())
        examples = self.examples() if self.use_examples else []
        scratchpad = ""
        result = AgentResult(question, None, "max_steps")
        seen: dict[tuple, int] = {}  # what each step did -> its 1-based number
        for n in range(1, self.max_steps + 1):
            fields = {"question": question, "tools": tools_text, "scratchpad": scratchpad}
            raw = self.model.complete(fields, STOP, examples) if examples else self.model.complete(fields, STOP)
            step = self._step(_cut_at_stop(raw), run=lambda key: key not in seen)
            result.steps.append(step)
            if progress:
                progress(step)
            if step.kind == "final":
                result.answer, result.stopped = step.action_input or "", "final_answer"
                return result
            key = _step_key(step)
            if key in seen:
                result.stopped, result.repeated = "repeated_action", seen[key]
                return result
            seen[key] = n
            scratchpad += f"Thought: {step.output.strip()}\nObservation: {step.observation}\n"
        return result

    def examples(self) -> list[dict]:
        """One worked example per tool that has one, its observation computed by the tool itself."""
        out = []
        for tool in self.tools.values():
            if tool.example is None:
                continue
            question, arg = tool.example
            observation = self._call(tool.name, arg)
            trace = (
                f" I should use the {tool.name}.\nAction: {tool.name}\nAction Input: {arg}\nObservation: "
                f"{observation}\nThought: I now know the final answer\nFinal Answer: {observation}"
            )
            out.append({"question": question, "trace": trace})
        return out

    def _step(self, output: str, run: Callable[[tuple], bool] = lambda key: True) -> Step:
        """Parse one reply; a tool runs unless ``run`` says no (a repeated action is not run again)."""
        final, action = _FINAL.search(output), _ACTION.search(output)
        if final and (not action or final.start() < action.start()):
            thought = output[: final.start()].strip()
            return Step(output, "final", thought, action_input=_first_line_block(final.group(1)))
        if action:
            name = action.group(1).strip().strip("`'\"[]").strip()
            block = _first_line_block(action.group(2))
            end = action.start(2) + action.group(2).find(block) + len(block) if block else action.start(2)
            output = output[:end]  # anything the model wrote after the input is dropped
            arg = block.strip("`").strip()
            arg = arg[1:-1] if len(arg) > 1 and arg[0] == arg[-1] and arg[0] in "'\"" else arg
            step = Step(output, "action", output[: action.start()].strip(), name, arg)
            step.observation = self._call(name, arg) if run(_step_key(step)) else None
            return step
        names = ", ".join(self.tools)
        first = next(iter(self.tools))
        hint = FORMAT_HINT.format(tools=names, first=first)
        only = _ACTION_ONLY.search(output)
        call = _CALL_FORM.match(only.group(1).strip()) if only else None
        if call and call.group(1) in self.tools:  # "Action: calculator[2 + 2]" or "calculator(2 + 2)"
            step = Step(output[: only.end()], "action", output[: only.start()].strip(), call.group(1), call.group(2))
            step.action_input = step.action_input.strip()
            step.observation = self._call(step.action, step.action_input) if run(_step_key(step)) else None
            return step
        if only:
            named = only.group(1).strip()
            hint = (
                f"Invalid format: 'Action: {named}' needs an 'Action Input: <input>' line after it."
                if named in self.tools
                else f"Invalid format: {named!r} is not a tool. Write the tool's name (one of {names}) after "
                f"'Action:' and its input on the next line, e.g.\nAction: {first}\nAction Input: <input>"
            )
        return Step(output, "format_error", observation=hint)

    def _call(self, name: str, arg: str) -> str:
        tool = self.tools.get(name) or self.tools.get(name.lower())
        if tool is None:
            return f"Error: there is no tool {name!r}; use one of: {', '.join(self.tools)}."
        try:
            text = tool(arg)
        except ToolError as e:
            return f"Error: {e}"
        except Exception as e:  # a user function failed: the model is told, the run goes on
            return f"Error: tool {tool.name} failed ({type(e).__name__}: {e})."
        text = " ".join(text.split()) if "\n" not in text else text.strip()
        return text if len(text) <= MAX_OBSERVATION_CHARS else text[:MAX_OBSERVATION_CHARS] + " ..."


def _step_key(step: Step) -> tuple:
    """What makes two steps the same: the tool and its input (spacing aside), or the same unparsed reply."""
    if step.kind == "action":
        return ("action", (step.action or "").lower(), " ".join((step.action_input or "").split()))
    return (step.kind, " ".join(step.output.split()))


def _cut_at_stop(text: str) -> str:
    """Models that ignore stop strings are cut here too, so an invented observation is never used."""
    cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _first_line_block(text: str) -> str:
    """The answer or input: up to the next blank line or the next Thought/Action line."""
    text = text.strip()
    stop = re.search(r"\n\s*\n|\n\s*(Thought|Action|Final Answer)\s*:", text)
    return (text[: stop.start()] if stop else text).strip()
