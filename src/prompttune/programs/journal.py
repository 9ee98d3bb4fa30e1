"""A search that resumes after a kill: every model call's answer is journaled, and replayed on a rerun.

The optimizers are deterministic given their seed, data and the LM's answers, so a rerun of the same search
asks the same questions in the same order. ``JournaledLM`` answers each from ``OUT/search.jsonl`` when it was
asked before (no model work) and appends every new answer there (one JSON line, flushed and synced), so a
search killed at any moment picks up where it stopped, with the same history, candidates and counts. The
journal's first line fingerprints the search (program, data, metric, optimizer, settings, model); a rerun of
a different search into the same folder is refused instead of mixing the two.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from prompttune.core.errors import DataError
from prompttune.programs.lm import LM, Prompt

JOURNAL_FILE = "search.jsonl"
FORMAT = "prompttune-search-journal"


def fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


class JournaledLM(LM):
    """``lm`` with its answers journaled at ``path``; ``replayed`` counts answers read back (from a run
    before a kill, or a question this run already asked: the same candidate scored twice costs no model work)."""

    def __init__(self, lm: LM, path: Path, search: str):
        self.lm, self.path = lm, Path(path)
        self.name, self.can_choose, self.can_score = lm.name, lm.can_choose, lm.can_score
        self.answers: dict[str, object] = {}
        self.replayed = 0
        if self.path.exists():
            self._load(search)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"format": FORMAT, "search": search})

    def _load(self, search: str) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if head.get("format") != FORMAT or head.get("search") != search:
            raise DataError(
                f"{self.path}: the journal of a different search (other program, data, metric or settings); "
                "pass --overwrite to start over, or give another --out."
            )
        kept = len(lines)
        for n, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                self.answers[entry["k"]] = entry["a"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if n == len(lines):  # a line cut short by the kill: dropped, its call is made again
                    kept = n - 1
                    break
                where = f"{self.path}, line {n}"
                raise DataError(f"{where}: not a journal entry; pass --overwrite to start over.") from None
        if kept < len(lines):  # rewrite without the torn line, so the next answers start on a line of their own
            self.path.write_text("\n".join(lines[:kept]) + "\n", encoding="utf-8")

    def _append(self, entry: dict) -> None:
        self._append_many([entry])

    def _append_many(self, entries: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
            f.flush()
            os.fsync(f.fileno())

    def _answer(self, key: str, ask):
        if key in self.answers:
            self.replayed += 1
            return self.answers[key]
        answer = ask()
        self.answers[key] = answer
        self._append({"k": key, "a": answer})
        return answer

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        return self._answer(_key("complete", asdict(prompt), max_tokens), lambda: self.lm.complete(prompt, max_tokens))

    def choose(self, prompt: Prompt, options: Sequence[str], baseline: Prompt | None = None) -> str | None:
        key = self._choose_key(prompt, options, baseline)
        return self._answer(key, lambda: self.lm.choose(prompt, options, baseline))

    def choose_many(self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None):
        """Answers from the journal where it has them; the rest asked in one batch, then journaled in order. An
        LM that scores options journals the scores (the choice is the highest), so an ensemble of candidates
        scored before reads their scores back instead of running them again."""
        if self.can_score:
            return super().choose_many(prompts, options, baseline)
        keys = [self._choose_key(p, options, baseline) for p in prompts]
        new = [i for i, k in enumerate(keys) if k not in self.answers]
        self.replayed += len(prompts) - len(new)
        if new:
            answers = self.lm.choose_many([prompts[i] for i in new], options, baseline)
            for i, answer in zip(new, answers, strict=True):
                self.answers[keys[i]] = answer
            self._append_many([{"k": keys[i], "a": answer} for i, answer in zip(new, answers, strict=True)])
        return [self.answers[k] for k in keys]

    def option_logprobs_many(
        self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None
    ) -> list[list[float]] | None:
        if not self.can_score:
            return None
        keys = [self._choose_key(p, options, baseline, "logprobs") for p in prompts]
        new = [i for i, k in enumerate(keys) if k not in self.answers]
        self.replayed += len(prompts) - len(new)
        if new:
            scores = self.lm.option_logprobs_many([prompts[i] for i in new], options, baseline)
            for i, row in zip(new, scores, strict=True):
                self.answers[keys[i]] = [float(x) for x in row]
            self._append_many([{"k": keys[i], "a": self.answers[keys[i]]} for i in new])
        return [list(self.answers[k]) for k in keys]

    @staticmethod
    def _choose_key(prompt: Prompt, options: Sequence[str], baseline: Prompt | None, kind: str = "choose") -> str:
        return _key(kind, asdict(prompt), list(options), asdict(baseline) if baseline else None)
