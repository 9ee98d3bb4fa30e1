"""An ensemble: several programs with the same inputs and outputs, one answer per row.

    Ensemble([best, second, third])       # e.g. the best candidates of a search (``--ensemble 3``)

How the members' answers combine:

- ``mean``: where every member is one step that picks a label by score and the LM gives scores (the
  in-process backbone), the label with the highest mean log-probability over the members (each normalized
  over the labels, calibrated where the member is). Each member's prompt is a cached prefix of its own.
- ``vote``: otherwise, the most common answer among the members whose reply parsed; a tie goes to the member
  listed first (the best, from a search).

Why: on the 135M default decoder the demos a prompt shows move its accuracy by up to 30 points on SST-2, and
different demo sets err on different rows. Three 8-demo prompts of 0.78 held-out accuracy each averaged to
0.830 (majority vote: 0.806); docs/programs.md. The cost is one pass per member per row.
"""

from __future__ import annotations

import json
from collections import Counter

from prompttune.core.errors import DataError
from prompttune.programs.lm import argmax
from prompttune.programs.modules import Prediction, Program, current_lm
from prompttune.programs.parse import OutputParseError

MAX_MEMBERS = 8


class Ensemble(Program):
    """Members (best first) run on the same rows; their answers combine by mean score or by vote."""

    def __init__(self, members: list):
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise DataError(f"an ensemble has 2 to {MAX_MEMBERS} members (got {len(members)}).")
        first = members[0].signature
        for i, m in enumerate(members[1:], start=2):
            sig = m.signature
            if sig.input_names != first.input_names or sig.output_names != first.output_names:
                raise DataError(
                    f"ensemble member {i} reads {sig.input_names} and writes {sig.output_names}; member 1 reads "
                    f"{first.input_names} and writes {first.output_names}: members must match."
                )
        self.members = list(members)

    @property
    def signature(self):
        return self.members[0].signature

    @property
    def steps(self):
        """The first member's steps (what the ensemble reads and writes is theirs)."""
        return self.members[0].steps

    def combine(self) -> str:
        """``mean`` where every member is one step choosing a label by score on an LM that scores, else ``vote``."""
        lm = current_lm()
        single = all(len(m.steps) == 1 and m.steps[0]._chooses(lm) for m in self.members)
        return "mean" if single and lm.can_score else "vote"

    def forward(self, **inputs) -> Prediction:
        pred = self.batch([inputs])[0]
        if pred is None:
            raise OutputParseError(self.signature.output_names[-1], "a reply from at least one member", "")
        return pred

    def batch(self, rows: list[dict]) -> list[Prediction | None]:
        return self._mean(rows) if self.combine() == "mean" else self._vote(rows)

    def _mean(self, rows: list[dict]) -> list[Prediction | None]:
        name = self.signature.output_names[-1]
        total, options = None, None
        for member in self.members:
            got = member.steps[0].option_logprobs(rows)
            if got is None:  # cannot happen after combine() said mean; kept as a guard
                return self._vote(rows)
            opts, scores = got
            if options is not None and tuple(opts) != tuple(options):
                return self._vote(rows)  # members with different label sets: their scores do not add up
            options = opts
            total = (
                scores
                if total is None
                else [[a + b for a, b in zip(x, y, strict=True)] for x, y in zip(total, scores, strict=True)]
            )
        return [Prediction({name: options[argmax(row)]}) for row in total]

    def _vote(self, rows: list[dict]) -> list[Prediction | None]:
        answers = [m.batch(rows) for m in self.members]
        out: list[Prediction | None] = []
        for i in range(len(rows)):
            got = [a[i] for a in answers if a[i] is not None]
            if not got:
                out.append(None)
                continue
            keys = [json.dumps(dict(p), sort_keys=True, default=str) for p in got]
            counts = Counter(keys)
            top = max(counts.values())
            out.append(got[next(j for j, k in enumerate(keys) if counts[k] == top)])
        return out

    def to_dict(self) -> dict:
        return {"ensemble": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, raw: dict, where: str, member_from_dict) -> Ensemble:
        members = raw.get("ensemble")
        if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
            raise DataError(f"{where}: 'ensemble' must list 2 to {MAX_MEMBERS} programs (each with 'steps').")
        return cls([member_from_dict(m, f"{where}, ensemble member {i}") for i, m in enumerate(members, start=1)])
