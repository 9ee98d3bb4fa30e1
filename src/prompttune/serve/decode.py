"""Generation requests decoded together: one batched decoding loop for completions of any tasks.

The worker takes the generation jobs of a batch (``batcher.Batcher``) and decodes them in ONE loop on their
shared backbone. The first step lays the rows out as ``mixed.score_mixed`` does,

    [pad to the longest prefix][its task's cached prefix][left padding][its prompt's tokens]

with the padding masked and each row's positions continued from the end of ITS prefix (one task's rows share
its prefix unexpanded); soft tokens in a row go in as embeddings (``PrefixModel.row_inputs``). Every later step
feeds each row's last token with its position + 1. Each row keeps what ``core.generate.Generator`` keeps for one
request: its own logits processors (repetition settings, streaming's reporter) applied to its own generated
tokens, its own grammar where the request gave a ``response_format`` (``structured.Constraint``: only the tokens
it allows, ending when it is complete), its own random generator (``seed``), ``max_tokens`` (bounded by the
context), end tokens and stop strings. A finished row leaves the batch (its keys/values are dropped), so the
others run on. The keys/values grow in place (``core.kv_cache.GrowingCache``): the prefixes are copied into its
buffers once per batch. Greedy rows are therefore token for token what ``PromptTask.generate`` /
``Generator.complete`` give alone (tested).

Rows asking for beam search or ``finish_sentence`` (the server never sends these) are decoded alone by
``Generator``. A row whose processors raise (a streaming client went away: ``StreamClosed``) fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prompttune.core import decode_step
from prompttune.core.backbone import KV, Backbone
from prompttune.core.errors import DataError
from prompttune.core.generate import EmbedHook, GenerationConfig, Generator
from prompttune.core.kv_cache import GrowingCache, stack_left_padded
from prompttune.serve.mixed import _inputs
from prompttune.structured import Constraint, constrained_pick


@dataclass
class GenRow:
    """One completion ready to decode: its prompt's token ids after ``prefix`` (the task's cached keys/values,
    or None), the hook that embeds soft tokens in the row (or None), and the request's settings."""

    ids: list[int]
    prefix: KV | None
    embed: EmbedHook | None
    config: GenerationConfig
    stopped: Callable[[], bool] = lambda: False  # the caller gave up: drop the row at the next step


def prepare(served, values: dict, config: GenerationConfig) -> GenRow:
    """A served task's completion request as a GenRow (in the worker: the prefix may be computed here)."""
    if served.kind == "labels":
        model = served.task.model
        missing = [v for v in model.template.variables if v not in values]
        if missing:
            raise DataError(f"generate: the template needs field(s) {missing}; pass them as a dict.")
        ids = model.row_ids(model.compiled.render_row(values))
        return GenRow(ids, model.cached_prefix() or None, model.row_inputs, config)
    ids, prefix = served.generator.prompt(served.template, values)
    return GenRow(ids, prefix, None, config)


class Completion(str):
    """A row's text, with what an OpenAI reply says of it: why it ended (``finish``: "length" when its token
    limit, ``max_tokens`` or the room left in the context, ended it, else "stop") and its prompt's tokens (the
    task's cached prefix and the rendered row, not the client's text alone)."""

    finish: str
    prompt_tokens: int
    tokens: int

    def __new__(cls, text: str, finish: str, prompt_tokens: int, tokens: int):
        new = super().__new__(cls, text)
        new.finish, new.prompt_tokens, new.tokens = finish, prompt_tokens, tokens
        return new


@dataclass
class _State:
    """A row in the loop: what it generated, and its result (text or error) once done."""

    row: GenRow
    limit: int
    processors: object
    rng: torch.Generator
    constraint: Constraint | None = None  # response_format: the grammar this row's text is held to
    out: list[int] = field(default_factory=list)
    result: str | BaseException | None = None
    prompt_tokens: int = 0
    finish: str = "stop"  # "length": ended by its token limit


class _Hook:
    """``mixed._inputs`` asks each distinct 'model' for ``row_inputs``: a row's embed hook, or the ids as they are."""

    def __init__(self, embed: EmbedHook | None):
        self.embed = embed

    def row_inputs(self, ids: Tensor):
        return self.embed(ids) if self.embed is not None else (ids, None)


@torch.no_grad()
def decode(backbone: Backbone, rows: Sequence[GenRow]) -> list[str | BaseException]:
    """Each row's text (or the error that ended it alone), in order; the rows decoded together."""
    results: list[str | BaseException | None] = [None] * len(rows)
    states: list[tuple[int, _State]] = []
    gen = Generator(backbone)
    for i, r in enumerate(rows):
        try:
            start = _length(r.prefix)
            if r.config.num_beams > 1 or r.config.finish_sentence or not r.ids:
                text = gen.generate(r.ids, prefix=r.prefix, embed=r.embed, config=r.config)
                limit = min(r.config.max_new_tokens, gen._room(start, len(r.ids)))
                n = len(backbone.tokenize(text))
                results[i] = Completion(text, "length" if n >= limit else "stop", start + len(r.ids), n)
                continue
            limit = min(r.config.max_new_tokens, gen._check_room(start, len(r.ids)))
            rng = torch.Generator().manual_seed(r.config.seed)
            state = _State(r, limit, r.config.processors(), rng, r.config.constraint(backbone))
            state.prompt_tokens = start + len(r.ids)
            states.append((i, state))
        except Exception as e:  # noqa: BLE001 - this row's error is its request's answer
            results[i] = e
    if states:
        for (i, _), done in zip(states, _loop(backbone, [s for _, s in states]), strict=True):
            results[i] = done
    return results


def _loop(backbone: Backbone, states: list[_State]) -> list[str | BaseException]:
    tok, ends = backbone.tokenizer, backbone.end_token_ids
    head = backbone.model.get_output_embeddings()
    input_ids, embeds, attention, positions, prefix = _first_step(backbone, [s.row for s in states])
    # the prefixes copied once into buffers that grow in place: a step copies no cache (core/kv_cache.py)
    cache = GrowingCache(prefix, len(states), backbone.model.config)
    live = list(range(len(states)))  # indices into states of the rows still decoding
    for step in range(max(s.limit for s in states)):
        hidden = backbone.run(input_ids, attention, positions, cache, inputs_embeds=embeds)
        logits = decode_step.linear(head, hidden[:, -1]).float()  # (live, vocab)
        picked: list[int | None] = []
        for j, k in enumerate(live):
            s = states[k]
            try:
                picked.append(_advance(s, logits[j : j + 1], step, tok, ends))
            except Exception as e:  # noqa: BLE001 - e.g. StreamClosed: this row alone ends
                s.result, _ = e, picked.append(None)
        keep = [j for j, nxt in enumerate(picked) if nxt is not None]
        if not keep:
            break
        if len(keep) < len(live):
            sel = torch.tensor(keep, device=attention.device)
            cache.keep_rows(sel)
            attention, positions = attention[sel], positions[sel]
            live = [live[j] for j in keep]
        input_ids, embeds = torch.tensor([[picked[j]] for j in keep]), None
        positions = positions[:, -1:] + 1
        attention = torch.cat([attention, torch.ones(len(live), 1, dtype=attention.dtype, device=attention.device)], 1)
    return [_result(s, tok) for s in states]


def _result(s: _State, tok) -> str | BaseException:
    if isinstance(s.result, BaseException):
        return s.result
    text = s.result if s.result is not None else tok.decode(s.out, skip_special_tokens=True)
    return Completion(text, s.finish, s.prompt_tokens, len(s.out))


def _advance(s: _State, logits: Tensor, step: int, tok, ends) -> int | None:
    """Pick this row's next token as ``Generator`` does; None when the row is done (``s.result`` set)."""
    if s.row.stopped():
        s.result = TimeoutError("the request was given up")
        return None
    raw = logits
    if s.processors:
        logits = s.processors(torch.tensor([s.out], dtype=torch.long, device=logits.device), logits)
    nxt = constrained_pick(s.constraint, raw, logits, lambda x: Generator._pick(x, s.row.config, s.rng))
    if nxt in ends:
        s.result = tok.decode(s.out, skip_special_tokens=True)
        return None
    s.out.append(nxt)
    if s.constraint is not None:
        s.constraint.advance(nxt)
        if s.constraint.finished:  # e.g. the JSON object closed: nothing more may follow
            s.result = tok.decode(s.out, skip_special_tokens=True)
            return None
    stop = s.row.config.stop
    if stop:
        text = tok.decode(s.out, skip_special_tokens=True)
        cut = min((i for i in (text.find(x) for x in stop) if i >= 0), default=-1)
        if cut >= 0:
            s.result = text[:cut]
            return None
    if step + 1 >= s.limit:
        s.result, s.finish = tok.decode(s.out, skip_special_tokens=True), "length"
        return None
    return nxt


def _first_step(backbone: Backbone, rows: list[GenRow]):
    """(input_ids, inputs_embeds, attention, positions, prefix) of the rows' prompts, laid out as mixed.py does."""
    plen = [_length(r.prefix) for r in rows]
    b, width, top = len(rows), max(len(r.ids) for r in rows), max(plen)
    ids = torch.full((b, width), backbone.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.ids) :] = torch.tensor(r.ids)
        mask[i, width - len(r.ids) :] = 1
    start = torch.tensor(plen)[:, None]
    positions = (start + mask.cumsum(1) - 1).clamp(min=start)
    prefix_mask = torch.zeros(b, top, dtype=torch.long)
    for i, p in enumerate(plen):
        prefix_mask[i, top - p :] = 1
    attention = torch.cat([prefix_mask, mask], dim=1)
    prefixes = {id(r.prefix): r.prefix for r in rows}  # one task's rows share its prefix object
    if len(prefixes) == 1:  # passed unexpanded: not copied per row
        prefix = rows[0].prefix
    else:
        prefix = stack_left_padded([r.prefix for r in rows], top) or None
    hooks: dict[int, _Hook] = {}
    groups: dict[int, list[int]] = {}
    owners = []
    for i, r in enumerate(rows):
        key = id(getattr(r.embed, "__self__", r.embed))  # bound methods differ per access; their owner does not
        if key not in hooks:
            hooks[key] = _Hook(r.embed)
            owners.append(hooks[key])
        groups.setdefault(id(hooks[key]), []).append(i)
    input_ids, embeds = _inputs(owners, groups, ids, backbone)
    return input_ids, embeds, attention, positions, prefix


def _length(prefix: KV | None) -> int:
    return prefix[0][0].shape[2] if prefix else 0
