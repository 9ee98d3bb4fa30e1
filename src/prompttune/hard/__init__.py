"""Prompts people write: evaluation of hard prompts, few-shot demo selection, chains, the ReAct agent and
its tools."""
