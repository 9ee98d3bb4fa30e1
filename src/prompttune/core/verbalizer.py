"""Verbalizer: the words that stand for each label, and optional contextual calibration.

A label may have several words (``positive -> great | good``) and a word may be several tokens
(``not_entailment -> not entailment``); each word is scored by the log-likelihood of its whole token
sequence, and a label's score is the log of the mean probability of its words.

Contextual calibration (Zhao et al. 2021, "Calibrate before use"): the label distribution the prompt
gives to content-free inputs (``N/A``, the empty string, ``[MASK]``) measures the prompt's bias;
calibrated scores divide it out (log p(label | x) - log p(label | content-free), renormalized).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prompttune.core.errors import DataError

CONTENT_FREE = ("N/A", "", "[MASK]")


@dataclass
class Verbalizer:
    labels: list[str]
    words: dict[str, list[str]] = field(default_factory=dict)
    calibration: list[float] | None = None  # log p(label | content-free), one per label

    def __post_init__(self) -> None:
        if not self.labels:
            raise DataError("verbalizer: no labels. The training data must have a 'label' field.")
        if len(set(self.labels)) != len(self.labels):
            raise DataError(f"verbalizer: duplicate labels in {self.labels}")
        for label in self.labels:
            self.words.setdefault(label, [default_word(label)])
        unknown = set(self.words) - set(self.labels)
        if unknown:
            raise DataError(
                f"verbalizer: words given for labels the data does not have: {sorted(unknown)}; "
                f"the labels are {self.labels}."
            )
        for label, words in self.words.items():
            if not words or any(not w.strip() for w in words):
                raise DataError(f"verbalizer: label {label!r} needs at least one non-empty word.")

    @classmethod
    def parse(cls, labels: list[str], spec: str | None) -> Verbalizer:
        """``--verbalizer``: a JSON file ({"label": ["word", ...]}) or 'label=word|word;label=word'."""
        if not spec:
            return cls(list(labels))
        if spec.endswith(".json"):
            path = Path(spec)
            if not path.is_file():
                raise DataError(f"--verbalizer {spec}: file not found.")
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"--verbalizer {spec}: not valid JSON ({e.msg}, line {e.lineno}).") from None
            ok = isinstance(raw, dict) and all(
                isinstance(v, str) or (isinstance(v, list) and all(isinstance(w, str) for w in v)) for v in raw.values()
            )
            if not ok:
                raise DataError(
                    f"--verbalizer {spec}: expected an object of label -> word or list of words, "
                    'e.g. {"positive": ["great", "good"], "negative": "bad"}.'
                )
            words = {k: [v] if isinstance(v, str) else list(v) for k, v in raw.items()}
        else:
            words = {}
            for part in filter(None, (p.strip() for p in spec.split(";"))):
                label, sep, rest = part.partition("=")
                if not sep:
                    raise DataError(
                        f"--verbalizer: {part!r} is not label=word; write e.g. 'positive=great|good;negative=bad'."
                    )
                words[label.strip()] = [w.strip() for w in rest.split("|")]
        return cls(list(labels), words)

    def index(self, label: str, where: str = "") -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise DataError(
                f"{where + ': ' if where else ''}label {label!r} is not one the prompt knows "
                f"({', '.join(self.labels)}). Evaluate on data with the labels it was trained on."
            ) from None

    @property
    def display_words(self) -> list[str]:
        """One word per label, for templates that list the options ({{ labels }})."""
        return [self.words[label][0] for label in self.labels]

    def forms(self) -> list[tuple[int, str]]:
        """Every (label index, word) pair."""
        return [(i, w) for i, label in enumerate(self.labels) for w in self.words[label]]

    def to_dict(self) -> dict:
        return {"labels": self.labels, "words": self.words, "calibration": self.calibration}

    @classmethod
    def from_dict(cls, d: dict) -> Verbalizer:
        return cls(list(d["labels"]), {k: list(v) for k, v in d["words"].items()}, d.get("calibration"))


def default_word(label: str) -> str:
    """The word a label is read as by default: underscores become spaces (not_entailment -> not entailment)."""
    return label.replace("_", " ").strip() or label
