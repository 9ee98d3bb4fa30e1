"""Citations for retrieved answers: the passage numbers an answer cites, and, when the model cites none, the
passages its words come from.

A small decoder asked to "cite passage numbers like [1]" rarely does, so ``rag ask`` does not rely on it:
numbers the model wrote are kept when they name a retrieved passage (others are dropped from the text); when
none is left, the answer is attributed to the passages that contain most of its content words (lexical
attribution, as post-hoc citation systems do), and their numbers are appended. An answer with no content
word in any passage ("I don't know.") cites nothing. ``cited_by`` says which of the two happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CITATION_RE = re.compile(r"\[(\d{1,3})\]")
WORD_RE = re.compile(r"\w+")
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have he her his i if in into is it its not of on or she so "
    "such than that the their then there these they this to was were what when where which who will with "
    "would you your know don".split()
)
MIN_SHARE = 0.5  # a passage is cited when it holds at least half of the answer's content words ...
NEAR_BEST = 0.8  # ... and at least 80% as many as the best passage
MAX_ATTRIBUTED = 2  # passages cited by attribution at most


@dataclass
class Cited:
    text: str  # the answer, with its citation marks
    citations: list[int]  # 1-based passage numbers, in the order cited
    cited_by: str | None  # "model", "overlap", or None (nothing cited)


def content_words(text: str) -> set[str]:
    """The words that carry content: lower-cased words that are not stop words, of 3+ letters, or numbers."""
    return {w for w in WORD_RE.findall(text.lower()) if w not in STOPWORDS and (len(w) >= 3 or w.isdigit())}


def cite(answer: str, passages: list[str]) -> Cited:
    """The answer with citations of ``passages`` (numbered from 1 as the prompt showed them)."""
    n = len(passages)
    valid = [int(m) for m in CITATION_RE.findall(answer) if 1 <= int(m) <= n]
    cleaned = re.sub(r"\s*\[(\d{1,3})\]", lambda m: m.group(0) if 1 <= int(m.group(1)) <= n else "", answer).strip()
    if valid:
        return Cited(cleaned, list(dict.fromkeys(valid)), "model")
    words = content_words(CITATION_RE.sub("", cleaned))
    if not words:
        return Cited(cleaned, [], None)
    shares = [len(words & content_words(p)) / len(words) for p in passages]
    best = max(shares, default=0.0)
    if best < MIN_SHARE:
        return Cited(cleaned, [], None)
    ranked = sorted(range(n), key=lambda i: -shares[i])
    chosen = [i + 1 for i in ranked if shares[i] >= NEAR_BEST * best][:MAX_ATTRIBUTED]
    marks = "".join(f"[{i}]" for i in chosen)
    return Cited(f"{cleaned} {marks}", chosen, "overlap")
