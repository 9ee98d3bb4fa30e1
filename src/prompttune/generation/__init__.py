"""Soft prompts that write: generation tasks (LM loss on the target tokens, BLEU/ROUGE-L/EM/F1)."""

from prompttune.generation.task import GenerationTask

__all__ = ["GenerationTask"]
