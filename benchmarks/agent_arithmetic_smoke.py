"""Smoke run of the ReAct agent with the default 135M decoder and the calculator on 5 arithmetic questions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/agent_arithmetic_smoke.py [--max-steps 4] [--no-examples]

Prints, per question, the kind of each step (action / format_error / final), the tool calls with their
observations, the answer and whether it holds the right number; then the totals. A 135M model often
does not follow the ReAct format; the point is what the runtime does then.
"""

from __future__ import annotations

import argparse
import json
import time

from prompttune import Backbone
from prompttune.core.backbone import set_threads
from prompttune.hard.agent import Agent, TemplateModel

QUESTIONS = [
    ("What is 17 * 23?", "391"),
    ("What is 1234 + 5678?", "6912"),
    ("What is 144 / 12?", "12"),
    ("What is 2 to the power of 10?", "1024"),
    ("What is 15% of 200?", "30"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-examples", action="store_true", help="no worked example in the prompt")
    args = ap.parse_args()
    set_threads()
    backbone = Backbone.load("smollm2")
    totals = {"correct": 0, "final_answer": 0, "tool_calls": 0, "format_errors": 0, "steps": 0}
    for question, want in QUESTIONS:
        model = TemplateModel(backbone, max_new_tokens=args.max_new_tokens)
        agent = Agent(model, ["calculator"], args.max_steps, examples=not args.no_examples)
        t0 = time.perf_counter()
        result = agent.run(question)
        kinds = [s.kind for s in result.steps]
        correct = result.answer is not None and want in result.answer
        totals["correct"] += correct
        totals["final_answer"] += result.stopped == "final_answer"
        totals["tool_calls"] += kinds.count("action")
        totals["format_errors"] += kinds.count("format_error")
        totals["steps"] += len(kinds)
        row = {
            "question": question,
            "want": want,
            "answer": result.answer,
            "correct": correct,
            "stopped": result.stopped,
            "steps": kinds,
            "tool_calls": [(s.action, s.action_input, s.observation) for s in result.steps if s.kind == "action"],
            "first_output": result.steps[0].output.strip()[:120],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row, ensure_ascii=False), flush=True)
    print(json.dumps({"questions": len(QUESTIONS), **totals}))


if __name__ == "__main__":
    main()
