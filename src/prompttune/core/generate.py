"""Free-text generation over a frozen decoder: the one generation verb every caller uses.

    gen = Generator(Backbone.load())
    gen.complete("rag", {"question": q, "context": passages}, GenerationConfig(max_new_tokens=96))
    gen.generate(row_ids, prefix=cached_kv, embed=row_inputs, config=config)   # a soft prompt's rows

``complete`` renders a hard template the way a zero-shot read-out does (the constant text before the
first row field is one cached key/value prefix, the row's text follows), so the same prompt gives the
same tokens everywhere. ``generate`` continues token ids after an optional KV prefix, reusing the
cache from step to step. Greedy, or sampled with a temperature and top-p; it ends at an end token
(``Backbone.end_token_ids``: eos and the chat template's end-of-turn token), at ``max_new_tokens``,
or just before the first stop string.

Beam search (``num_beams`` > 1, ``core/beam.py``): the ``num_beams`` likeliest continuations are kept at
every step, all rows of a batch and all their beams in one forward pass over the cached prefix; a finished
hypothesis scores sum(log p) / tokens ** ``length_penalty`` (1.0 by default: the mean log-prob per token;
0: the plain sum, which favours short texts; above 1: longer ones), and the best-scoring one is returned.

Repetition control: a repetition penalty of 1.1 and no repeated 4-gram by default, both over the
tokens generated so far only, never the prompt (HF's penalty also counts the prompt, which pushes an
answer away from the very passage it should quote). Measured with the default decoder, greedy, 96
tokens, on 8 SQuAD questions through the ``rag`` template (one passage each) and 4 chat prompts
(benchmarks/bench_repetition.py): repeated word 4-grams per output 0.060 plain -> 0.000; answers
containing the gold span 4/8 -> 5/8 (rag answers stopped restating "The answer is: X" twice). No
repeated 4-gram alone: 0.000 and 4/8; no repeated 3-gram: 0.000, 4/8, but names get mangled
("Carolina Panther"); a penalty of 1.3 with no repeated 4-gram (a first run, 7 prompts): run-on prose (punctuation is
penalized too). The agent turns both off (its format words recur by design).
``repetition_penalty=1.0, no_repeat_ngram_size=0`` is plain greedy
decoding, token for token what ``transformers``' ``generate`` gives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from prompttune.core.errors import DataError, ModelError

if TYPE_CHECKING:  # torch is imported where it is used: a chain file is checked without it
    from torch import Tensor

    from prompttune.core.backbone import KV, Backbone

MAX_NEW_TOKENS = 4096  # per call, whatever the model's context allows
MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 200
MAX_BEAMS = 16  # hypotheses per row at most (each carries its own copy of the prefix's keys/values)
MAX_DRAFT_TOKENS = 8  # prompt-lookup decoding: drafted tokens per row and step at most
SENTENCE_GRACE_TOKENS = 32  # finish_sentence: tokens past max_new_tokens allowed to end the sentence
DEFAULT_REPETITION_PENALTY = 1.1
DEFAULT_NO_REPEAT_NGRAM = 4
_SENTENCE_END = re.compile(r"[.!?\u3002][\"')\]]*(?=\s|$)|\n")

# (input_ids (1, n) or None, inputs_embeds (1, n, d) or None) for the first step's ids
EmbedHook = Callable[["Tensor"], "tuple[Tensor | None, Tensor | None]"]


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Checks itself: a bad value is an error naming the setting and its flag.

    finish_sentence: when the text reaches ``max_new_tokens`` mid-sentence, go on for up to
    SENTENCE_GRACE_TOKENS more to end it, and otherwise cut back to the last sentence end (if any).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY
    no_repeat_ngram_size: int = DEFAULT_NO_REPEAT_NGRAM
    finish_sentence: bool = False
    num_beams: int = 1  # > 1: beam search (core/beam.py), deterministic
    length_penalty: float = 1.0  # beam search: a hypothesis scores sum(log p) / tokens ** length_penalty
    draft_tokens: int = 0  # greedy, batched: tokens drafted per step from n-grams seen (``generation/lookup``)
    grammar: str | None = None  # hold the text to this grammar (``structured.grammar_for``: a JSON schema)

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        _whole("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _whole("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, 64)
        _whole("seed", self.seed, 0, 2**63 - 1)
        _whole("num_beams", self.num_beams, 1, MAX_BEAMS)
        _whole("draft_tokens", self.draft_tokens, 0, MAX_DRAFT_TOKENS)
        _number("length_penalty", self.length_penalty, "a number from -10 to 10 (0: sum of log-probs)", _lp_ok)
        if self.num_beams > 1 and (self.temperature > 0 or self.finish_sentence):
            raise DataError(
                f"num_beams (--num-beams) {self.num_beams}: beam search is deterministic; use it with temperature 0 "
                "and without finish_sentence, or use --num-beams 1."
            )
        if self.grammar is not None and (self.draft_tokens or self.finish_sentence):
            raise DataError(
                "grammar (response_format, --json-schema): held output is checked token by token; use it without "
                "draft_tokens or finish_sentence."
            )
        _number("temperature", self.temperature, "0 (greedy) or more", lambda x: x >= 0)
        _number("top_p", self.top_p, "a number in (0, 1]", lambda x: 0 < x <= 1)
        _number(
            "repetition_penalty",
            self.repetition_penalty,
            "a number above 0, at most 100 (1 = off)",
            lambda x: 0 < x <= 100,
        )
        if len(stop) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s for s in stop):
            raise DataError(f"stop (--stop): give at most {MAX_STOP_STRINGS} non-empty strings.")
        if any(len(s) > MAX_STOP_CHARS for s in stop):
            raise DataError(f"stop (--stop): a stop string is longer than {MAX_STOP_CHARS} characters.")

    def replace(self, **changes) -> GenerationConfig:
        return replace(self, **changes)

    def constraint(self, backbone: Backbone):
        """A fresh ``structured.Constraint`` for one completion under ``grammar``, or None."""
        if self.grammar is None:
            return None
        from prompttune.structured import Constraint

        return Constraint(backbone, self.grammar)

    def processors(self):
        """transformers' logits processors for the repetition settings, applied to raw logits."""
        from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        procs = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            procs.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        return procs


def _lp_ok(x: float) -> bool:
    return -10 <= x <= 10


def _flag(name: str) -> str:
    return f"{name} (--{name.replace('_', '-')})"


def _whole(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataError(f"{_flag(name)} is {value!r}: give a whole number from {low} to {high:,}.")


def _number(name: str, value, what: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or not ok(value):
        raise DataError(f"{_flag(name)} is {value!r}: give {what}.")
    if math.isinf(value):
        raise DataError(f"{_flag(name)} is {value!r}: give a finite number.")


class Generator:
    """Generation over one decoder backbone; constant prompt prefixes are cached between calls."""

    PREFIX_CACHE_SIZE = 4

    def __init__(self, backbone: Backbone):
        if backbone.kind != "decoder":
            raise ModelError(f"--model {backbone.model_id}: an encoder cannot generate text; use a decoder.")
        self.backbone = backbone
        self._prefixes: dict[tuple[int, ...], KV] = {}

    # --- a hard template ------------------------------------------------------------------------
    def complete(self, template, values: Mapping[str, object], config: GenerationConfig | None = None) -> str:
        """The text a hard template's prompt continues with (soft slots left out).

        Rendered as a zero-shot read-out renders it: the text before the first row field is a cached
        prefix (after the tokenizer's bos, if it adds one), the row's text is tokenized on its own.
        """
        row, prefix = self.prompt(template, values)
        return self.generate(row, prefix=prefix, config=config)

    def prompt(self, template, values: Mapping[str, object]) -> tuple[list[int], KV | None]:
        """What ``complete`` continues: the row's token ids and the cached prefix's keys/values (or None)."""
        from prompttune.core.template import Template

        tmpl = Template.from_spec(template).hard()
        missing = sorted(v for v in tmpl.variables if v not in values)
        if missing:
            raise DataError(f"generate: the template needs field(s) {missing}; give them as values.")
        compiled = tmpl.compile(self.backbone.tokenizer, [], 1)
        prefix_ids = self.backbone.bos_ids + (self.backbone.tokenize(compiled.prefix_text) if compiled.prefix else [])
        row = self.backbone.tokenize(compiled.render_row(dict(values)))
        if not row:  # an empty row (e.g. a template ending with an empty field): the prefix's last token runs
            if not prefix_ids:
                raise DataError("generate: the prompt is empty; give the template some text or the values some.")
            prefix_ids, row = prefix_ids[:-1], prefix_ids[-1:]
        return row, self._prefix(prefix_ids)

    def _prefix(self, ids: list[int]) -> KV | None:
        if not ids:
            return None
        key = tuple(ids)
        if key not in self._prefixes:
            self._check_room(len(ids), 0)
            import torch

            embeds = self.backbone.embed(torch.tensor(ids))[None]  # (1, p, d)
            with torch.no_grad():
                kv = [(k.detach(), v.detach()) for k, v in self.backbone.prefix_kv(embeds)]
            while len(self._prefixes) >= self.PREFIX_CACHE_SIZE:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = kv
        return self._prefixes[key]

    # --- token ids ------------------------------------------------------------------------------
    def generate(
        self,
        ids: Sequence[int] | Tensor,
        prefix: KV | None = None,
        embed: EmbedHook | None = None,
        config: GenerationConfig | None = None,
    ) -> str:
        """Text continuing ``ids`` (the prompt's tokens after the cached ``prefix``, if any).

        ``embed`` maps the first step's (1, n) ids to (input_ids, inputs_embeds): the hook for rows that
        carry soft tokens (written as negative ids). Later steps feed the generated token alone.
        """
        import torch

        with torch.no_grad():
            return self._generate(ids, prefix, embed, config or GenerationConfig())

    def _generate(self, ids, prefix: KV | None, embed: EmbedHook | None, config: GenerationConfig) -> str:
        import torch
        from torch import Tensor

        ids = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else list(ids)
        if not ids:
            raise DataError("generate: no prompt tokens after the prefix; give at least one token to continue.")
        start = prefix[0][0].shape[2] if prefix else 0
        limit = min(config.max_new_tokens, self._check_room(start, len(ids)))
        if config.num_beams > 1:
            from prompttune.core.beam import beam_search

            return beam_search(self.backbone, [ids], prefix, embed or (lambda r: (r, None)), config)[0]
        grace = min(SENTENCE_GRACE_TOKENS, self._room(start, len(ids)) - limit) if config.finish_sentence else 0
        row = torch.tensor([ids])
        input_ids, embeds = embed(row) if embed is not None else (row, None)
        attention = torch.ones(1, start + len(ids), dtype=torch.long)
        positions = torch.arange(start, start + len(ids))[None]
        head = self.backbone.model.get_output_embeddings()
        from prompttune.structured import constrained_pick

        processors, constraint = config.processors(), config.constraint(self.backbone)
        rng = torch.Generator().manual_seed(config.seed)
        ends = self.backbone.end_token_ids
        tok = self.backbone.tokenizer
        cache, out, text = prefix, [], ""
        for step in range(limit + grace):
            hidden, cache = self.backbone.run(
                input_ids, attention, positions, cache, inputs_embeds=embeds, return_cache=True
            )
            raw = logits = head(hidden[:, -1]).float()  # (1, vocab)
            if processors:
                logits = processors(torch.tensor([out], dtype=torch.long, device=logits.device), logits)
            nxt = constrained_pick(constraint, raw, logits, lambda x: self._pick(x, config, rng))
            if nxt in ends:
                return tok.decode(out, skip_special_tokens=True)
            out.append(nxt)
            if constraint is not None:
                constraint.advance(nxt)
                if constraint.finished:
                    return tok.decode(out, skip_special_tokens=True)
            done = step + 1 >= limit
            if config.stop or (grace and done):
                text = tok.decode(out, skip_special_tokens=True)
                cut = min((i for i in (text.find(s) for s in config.stop) if i >= 0), default=-1)
                if cut >= 0:
                    return text[:cut]
            if done and (not grace or _ends_sentence(text)):
                return tok.decode(out, skip_special_tokens=True)
            input_ids, embeds = torch.tensor([[nxt]]), None
            positions = positions[:, -1:] + 1
            attention = torch.cat([attention, torch.ones(1, 1, dtype=torch.long)], dim=1)
        return _cut_to_sentence(tok.decode(out, skip_special_tokens=True))  # the grace ran out mid-sentence

    @staticmethod
    def _pick(logits: Tensor, config: GenerationConfig, rng) -> int:
        import torch

        if config.temperature <= 0:
            return int(logits[0].argmax())
        logits = logits / config.temperature
        if config.top_p < 1.0:
            from transformers import TopPLogitsWarper

            logits = TopPLogitsWarper(config.top_p)(None, logits)
        return int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=rng))

    def _room(self, start: int, n: int) -> int:
        return self.backbone.max_length - start - n

    def _check_room(self, start: int, n: int) -> int:
        room = self._room(start, n)
        if room <= 0:
            raise DataError(
                f"generate: the prompt is {start + n} tokens, and the model's context holds "
                f"{self.backbone.max_length}; shorten the prompt (fewer passages, a shorter text)."
            )
        return room


def _ends_sentence(text: str) -> bool:
    return bool(re.search(r"(?:[.!?\u3002][\"')\]]*|\n)\s*$", text))


def _cut_to_sentence(text: str) -> str:
    """The text up to its last sentence end; the whole text when it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends and text[: ends[-1]].strip() else text
