"""One forward pass for a batch that mixes tasks: every row runs over its own task's prefix, all rows together.

A mixed batch of a pack holds rows of several tasks, each with its own constant prefix (template text and soft
tokens) and its own verbalizer. Scored task by task, a step ran the backbone once per task for its prefix, once
per task for its rows and once per task for its multi-token label words (0.54x the examples/s of the tasks
trained alone). Here each of the three is one pass for all tasks (0.83-0.92x, docs/multitask.md):

- ``joint_prefixes``: the tasks' soft tokens (and any text after them) run as one batch over their constant
  leads (kept keys/values, left-padded to the longest, masked; each task's own length after its lead too);
- ``joint_label_scores``: each row is given its task's prefix (left-padded, masked), and the rows run as one
  batch: a key keeps the position it was computed at, and each row's tokens are numbered from the end of its own
  prefix, so a row scores as it does alone. Each task's label words are read from its rows' last positions;
- ``_joint_inline``: the 2nd.. tokens of every task's multi-token label words, each row its own task's
  (padded to the longest, under the row's tree mask), in the rows' own pass (``label_forms.inline_mask``);
  where a task's words are too many for that, ``_joint_continuations`` runs them in one pass over all rows'
  keys/values after it.

Tests check scores and gradients against each task's own ``label_scores`` and ``prefix_kv``. Rows whose task
splits them ("late" soft tokens after the input, whose text runs without gradients) keep the task-by-task path,
which is cheaper for them (``joint_label_scores`` returns None); label words in several chunks continue task
by task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core.backbone import KV
from prompttune.core.kv_cache import stack_left_padded
from prompttune.label_words.label_forms import chunk_scores, inline_layout, with_label_tokens
from prompttune.scorer import PromptModel

Group = tuple[PromptModel, list[list[int]], KV]  # a task's model, its rows' token ids, its prefix's keys/values


def joint_prefixes(models: list[PromptModel]) -> list[KV]:
    """Each model's ``prefix_kv()``, with gradients; where their methods run embeddings after a constant lead
    (``SoftPromptMethod.prefix_inputs``), computed in one forward pass."""
    if len(models) < 2 or any(m.in_step for m in models) or len({id(m.backbone) for m in models}) > 1:
        return [m.prefix_kv() for m in models]
    try:
        inputs = [m.method.prefix_inputs(m.backbone, m.segments) for m in models]
    except NotImplementedError:
        return [m.prefix_kv() for m in models]
    if any(e is None for _, e in inputs):
        return [m.prefix_kv() for m in models]
    backbone = models[0].backbone
    leads = [past[0][0].shape[2] if past else 0 for past, _ in inputs]
    sizes = [e.shape[1] for _, e in inputs]
    width, n = max(leads), max(sizes)
    if any(a == 0 and b < n for a, b in zip(leads, sizes, strict=True)):  # padding that would see no token at all
        return [m.prefix_kv() for m in models]
    past = stack_left_padded([p for p, _ in inputs], width) if width else None
    # each task: [padding, its lead] as keys/values, then [padding, what follows its lead] run here (padding masked)
    attention = torch.tensor(
        [[0] * (width - a) + [1] * a + [0] * (n - b) + [1] * b for a, b in zip(leads, sizes, strict=True)]
    )
    positions = torch.stack([torch.arange(a + b - n, a + b).clamp(min=a) for a, b in zip(leads, sizes, strict=True)])
    embeds = torch.cat([F.pad(e, (0, 0, n - e.shape[1], 0)) for _, e in inputs])
    _, kv = backbone.run(None, attention, positions, past, inputs_embeds=embeds, return_cache=True)

    def own(t: Tensor, i: int) -> Tensor:
        lead, rest = t[i : i + 1, :, width - leads[i] : width], t[i : i + 1, :, width + n - sizes[i] :]
        return torch.cat([lead, rest], dim=2) if sizes[i] < n else t[i : i + 1, :, width - leads[i] :]

    return [[(own(k, i), own(v, i)) for k, v in kv] for i in range(len(models))]


def can_join(groups: list[Group]) -> bool:
    """Whether the groups can run as one batch: one backbone, rows that carry their gradients whole."""
    if len(groups) < 2 or len({id(m.backbone) for m, _, _ in groups}) > 1:
        return False
    return all(m.late_split(rows, prefix) is None and prefix for m, rows, prefix in groups)


def _layout(groups: list[Group]) -> tuple[int, Tensor, Tensor, Tensor]:
    """(prefix width, row ids (b, w) left-padded, attention (b, width + w), positions (b, w))."""
    lengths = [prefix[0][0].shape[2] for _, _, prefix in groups]
    width = max(lengths)
    rows = [(x, p) for (_, batch, _), p in zip(groups, lengths, strict=True) for x in batch]
    w = max(len(x) for x, _ in rows)
    pad = groups[0][0].backbone.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), w), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), w, dtype=torch.long)
    lead = torch.zeros(len(rows), width, dtype=torch.long)
    own = torch.zeros(len(rows), 1, dtype=torch.long)
    for i, (x, p) in enumerate(rows):
        if x:
            ids[i, w - len(x) :] = torch.tensor(x)
            mask[i, w - len(x) :] = 1
        lead[i, width - p :] = 1
        own[i] = p
    positions = torch.maximum(own + mask.cumsum(1) - 1, own)
    return width, ids, torch.cat([lead, mask], dim=1), positions


def _inputs(groups: list[Group], ids: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Token ids for the batch, or embeddings where some task's rows carry soft tokens (its own table)."""
    parts, start = [], 0
    for model, batch, _ in groups:
        parts.append(model.row_inputs(ids[start : start + len(batch)]))
        start += len(batch)
    if all(e is None for _, e in parts):
        return torch.cat([i for i, _ in parts]), None
    backbone = groups[0][0].backbone
    return None, torch.cat([e if e is not None else backbone.embed(i) for i, e in parts])


def joint_label_scores(groups: list[Group]) -> list[Tensor] | None:
    """Each group's (rows, labels) scores, as ``PromptModel.label_scores`` gives them, from one forward pass of
    all rows; None where the groups cannot be joined (``can_join``)."""
    if not can_join(groups):
        return None
    chunks = [m._inline_chunk() if m.max_form_len > 1 else None for m, _, _ in groups]
    if any(c is not None for c in chunks) and all(
        (c is None) == (m.max_form_len == 1) for c, (m, _, _) in zip(chunks, groups, strict=True)
    ):
        return _joint_inline(groups, chunks)
    # tasks whose words take several tokens first: the continuation pass then runs the batch's first rows only
    order = sorted(range(len(groups)), key=lambda g: groups[g][0].max_form_len == 1)
    if order != list(range(len(groups))):
        scores = joint_label_scores([groups[g] for g in order])
        back = {g: i for i, g in enumerate(order)}
        return None if scores is None else [scores[back[g]] for g in range(len(groups))]
    backbone = groups[0][0].backbone
    width, ids, attention, positions = _layout(groups)
    need_more = any(m.max_form_len > 1 for m, _, _ in groups)
    input_ids, embeds = _inputs(groups, ids)
    out = backbone.run(
        input_ids,
        attention,
        positions,
        stack_left_padded([p for _, _, p in groups], width, [len(b) for _, b, _ in groups]),
        inputs_embeds=embeds,
        return_cache=need_more,
    )
    hidden, cache = out if need_more else (out, None)
    spans, start = [], 0
    for _, batch, _ in groups:
        spans.append(slice(start, start + len(batch)))
        start += len(batch)
    weights = [backbone.lm_rows(model.candidates) for model, _, _ in groups]
    later = _joint_continuations(groups, spans, weights, cache, attention, positions) if need_more else None
    scores = []
    for g, (model, _, _) in enumerate(groups):
        rows, rows_w = spans[g], weights[g]
        first = F.log_softmax(hidden[rows, -1].float() @ rows_w.float().T, dim=-1)
        form_scores = first[:, model.form_first]
        if later is not None and later[g] is not None:
            form_scores = form_scores + later[g]
        elif later is None and model.max_form_len > 1:
            mine = [(k[rows], v[rows]) for k, v in cache]
            form_scores = form_scores + model._continuations(mine, attention[rows], positions[rows], rows_w)
        scores.append(model._forms_to_labels(form_scores))
    return scores


def _joint_inline(groups: list[Group], chunks: list) -> list[Tensor]:
    """``joint_label_scores`` in one pass: each row runs with its own task's label-word tokens after it (padded
    to the longest; ``label_forms.inline_mask``), where the rows then the words' continuation took two passes."""
    backbone = groups[0][0].backbone
    width, ids, attention, positions = _layout(groups)
    w = ids.shape[1]
    counts = [len(b) for _, b, _ in groups]
    input_ids, embeds = _inputs(groups, ids)
    past = stack_left_padded([p for _, _, p in groups], width, counts)
    input_ids, embeds, mask, pos = with_label_tokens(
        input_ids, embeds, attention, positions, inline_layout(chunks, counts), backbone.embed, past[0][0].dtype
    )
    hidden = backbone.run(input_ids, mask, pos, past, inputs_embeds=embeds)
    scores, start = [], 0
    for (model, batch, _), chunk in zip(groups, chunks, strict=True):
        rows, start = slice(start, start + len(batch)), start + len(batch)
        rows_w = backbone.lm_rows(model.candidates)
        first = F.log_softmax(hidden[rows, w - 1].float() @ rows_w.float().T, dim=-1)
        form_scores = first[:, model.form_first]
        if chunk is not None:
            form_scores = form_scores + chunk_scores(hidden[rows, w:], chunk, rows_w)
        scores.append(model._forms_to_labels(form_scores))
    return scores


def _joint_continuations(groups, spans, weights, cache: KV, attention: Tensor, positions: Tensor):
    """The 2nd.. tokens of every task's multi-token label words in one pass over all rows' keys/values (each row
    runs its own task's continuation tokens, padded to the longest; see ``PromptModel._continuations``): per group
    its (rows, forms) log-likelihoods, None for a task whose words are one token each (its rows, after those of
    the tasks with continuations, do not run). None when a task's words take several chunks (each task then runs
    its own)."""
    chunks = [model._cont_chunks for model, _, _ in groups]
    if any(len(c) > 1 for c in chunks):
        return None
    # only rows up to the last task with continuations run (the caller puts those tasks first): views, no copies
    b = max(rows.stop for c, rows in zip(chunks, spans, strict=True) if c)
    if b < attention.shape[0]:
        cache = [(k[:b], v[:b]) for k, v in cache]
        attention, positions = attention[:b], positions[:b]
    dev, dtype = attention.device, cache[0][0].dtype
    width = attention.shape[1]
    n = max(c[0].ids.shape[1] for c in chunks if c)
    pad = groups[0][0].backbone.tokenizer.pad_token_id or 0
    ids = torch.full((b, n), pad, dtype=torch.long, device=dev)
    depth = torch.zeros(b, n, dtype=torch.long, device=dev)
    seen = torch.eye(n, dtype=torch.bool, device=dev).repeat(b, 1, 1)  # padding steps see themselves (and the row)
    for c, rows in zip(chunks, spans, strict=True):
        if c:
            m = c[0].ids.shape[1]
            ids[rows, :m], depth[rows, :m], seen[rows, :m, :m] = c[0].ids, c[0].depth, c[0].visible
    blocked = torch.finfo(dtype).min
    row_mask = torch.zeros(b, 1, 1, width, dtype=dtype, device=dev).masked_fill_(
        attention[:, None, None, :] == 0, blocked
    )
    tree = torch.zeros(b, 1, n, n, dtype=dtype, device=dev).masked_fill_(~seen[:, None], blocked)
    mask = torch.cat([row_mask.expand(b, 1, n, width), tree], dim=-1)
    backbone = groups[0][0].backbone
    hidden = backbone.run(ids, mask, positions[:, -1:].to(dev) + 1 + depth, cache)  # (b, n, d)
    out = []
    for c, rows, rows_w in zip(chunks, spans, weights, strict=True):
        if not c:
            out.append(None)
            continue
        m = c[0].ids.shape[1]
        logp = F.log_softmax(hidden[rows, :m].float() @ rows_w.float().T, dim=-1)  # (rows, m, C)
        picked = logp.gather(2, c[0].target.expand(logp.shape[0], m)[..., None])[..., 0]
        out.append(picked @ c[0].assign)
    return out
