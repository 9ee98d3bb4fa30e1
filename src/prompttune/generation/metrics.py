"""Generation metrics over several references per input: BLEU (sacrebleu, 0-100), ROUGE-L (rouge-score,
F-measure, 0-100), exact match and token F1 (SQuAD's normalization, 0-100, best reference per input).

BLEU is a corpus score: every hypothesis is scored against all of its references at once, as the E2E
official script does (inputs with fewer references than others get empty reference slots, which sacrebleu
skips). ROUGE-L, exact match and F1 take each input's best reference and average over inputs.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from prompttune.core.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalization)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 (0-1) of the normalized texts; two empty texts match."""
    pred, gold = normalize(prediction).split(), normalize(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise DataError(f"metrics: {len(predictions)} predictions for {len(references)} reference lists.")
    for i, refs in enumerate(references):
        if not refs or isinstance(refs, str):
            raise DataError(f"metrics: input {i + 1} needs a list of at least one reference text.")


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU (0-100) with every input's references (their number may vary)."""
    import sacrebleu

    _check(predictions, references)
    width = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over inputs of the best reference's ROUGE-L F-measure (rouge-score, stemmed), 0-100."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if not predictions:
        return 0.0
    pairs = zip(predictions, references, strict=True)
    total = sum(scorer.score_multi(list(refs), pred)["rougeL"].fmeasure for pred, refs in pairs)
    return 100.0 * total / len(predictions)


def generation_report(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """bleu, rougeL, exact_match, f1 (all 0-100) and n (inputs) / n_references."""
    _check(predictions, references)
    n = len(predictions)
    em = sum(max(normalize(p) == normalize(r) for r in refs) for p, refs in zip(predictions, references, strict=True))
    f1 = sum(max(token_f1(p, r) for r in refs) for p, refs in zip(predictions, references, strict=True))
    return {
        "bleu": corpus_bleu(predictions, references) if n else 0.0,
        "rougeL": rouge_l(predictions, references),
        "exact_match": 100.0 * em / n if n else 0.0,
        "f1": 100.0 * f1 / n if n else 0.0,
        "n": n,
        "n_references": sum(len(r) for r in references),
    }
