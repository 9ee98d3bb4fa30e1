"""ATTEMPT-style transfer (Asai et al. 2022): a new target prompt plus a small attention module that mixes a pack's
frozen source prompts, with weights that depend on each input.

For an input x (its row's token embeddings, max-pooled: x̂) and prompts P_1..P_K (the pack's source tasks) and
P_t (the new target prompt, trained), each max-pooled over its soft tokens (p̂_j):

    h(x) = LayerNorm(W_up · SiLU(W_down · x̂))                        (width d -> r -> d)
    a_j(x) = softmax_j( p̂_j · h(x) / (T · √d) )   over j = 1..K and t    (T: the temperature)
    P(x) = P_t + Σ_j a_j(x) · P_j

as in the paper (its attention also covers the target prompt; √d keeps the logits near 0 at the start, so the
first mixture is close to uniform). Only P_t and the attention module train; the source prompts are buffers,
saved in the artifact so it stands alone. The prompt differs per row, so the soft tokens in the constant
prefix (the early templates' ``[soft]``) are run per row, batched; in the late templates the prefix stays
constant and only the rows' soft tokens change. `eval`/`predict` load it like any artifact; the server scores
its rows per task with ``score`` (not in mixed batches over cached prefixes) and does not generate with it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompttune.core import artifact
from prompttune.core.backbone import KV, Backbone
from prompttune.core.errors import ArtifactError, DataError, ModelError
from prompttune.core.template import SoftSlot, Template
from prompttune.core.verbalizer import Verbalizer
from prompttune.methods.base import split_lead
from prompttune.methods.prompt_tuning import PromptTuning, PromptTuningConfig
from prompttune.multitask.specs import shape_mismatch
from prompttune.prompt_task import PromptTask
from prompttune.scorer import PromptModel

MIXTURE = "mixture"  # --source-task mixture
METHOD = "attempt"
HIDDEN = 64  # the attention module's bottleneck width r
TEMPERATURE = 1.0
MAX_SOURCES = 32  # source prompts at most (a pack holds at most 32 tasks)


@dataclass
class MixtureConfig(PromptTuningConfig):
    hidden: int = HIDDEN
    temperature: float = TEMPERATURE
    sources: int = 2  # how many source prompts (their tensors are in the weights)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reparam_hidden:
            raise DataError("--reparam-hidden: not with --source-task mixture (the mixture trains the table itself).")
        if not 1 <= self.hidden <= 4096:
            raise DataError(f"mixture hidden width {self.hidden}: must be between 1 and 4096.")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise DataError(f"mixture temperature {self.temperature}: must be a positive finite number.")
        if not 2 <= self.sources <= MAX_SOURCES:
            raise DataError(f"{self.sources} source prompts: a mixture needs 2 to {MAX_SOURCES}.")


class PromptMixture(PromptTuning):
    """Prompt tuning's table (the target prompt P_t, ``embeddings``) plus frozen sources and the attention module.

    Outside ``rows(...)`` it reads as P_t alone; inside, the soft tokens are each row's P(x) (``tables``)."""

    name = METHOD  # not registered: only ``mixture_task`` builds it (it needs a pack's sources)
    config_class = MixtureConfig
    peft_type = None  # no single table to export

    def __init__(self, config: MixtureConfig, backbone: Backbone, slots: list[SoftSlot], init_context: dict):
        super().__init__(config, backbone, slots, init_context)
        n, d = self.embeddings.shape
        self.register_buffer("sources", torch.zeros(config.sources, n, d))  # (K, n, d), frozen
        self.down, self.up, self.norm = nn.Linear(d, config.hidden), nn.Linear(config.hidden, d), nn.LayerNorm(d)
        self._rows: Tensor | None = None  # (b, n, d) while a batch is scored

    def set_sources(self, sources: Tensor) -> None:
        if tuple(sources.shape) != tuple(self.sources.shape):
            raise DataError(f"source prompts of shape {tuple(sources.shape)}, expected {tuple(self.sources.shape)}.")
        self.sources.copy_(sources.float())

    def mixture_weights(self, pooled: Tensor) -> Tensor:
        """(b, K + 1) weights over the sources and the target prompt (last), from max-pooled inputs (b, d)."""
        prompts = torch.cat([self.sources, self.embeddings[None]])  # (K + 1, n, d)
        keys = prompts.max(dim=1).values  # (K + 1, d)
        h = self.norm(self.up(F.silu(self.down(pooled.float()))))  # (b, d)
        d = keys.shape[-1]
        return torch.softmax(h @ keys.T / (self.config.temperature * math.sqrt(d)), dim=-1)

    def tables(self, pooled: Tensor) -> Tensor:
        """(b, n, d): each row's prompt P_t + Σ a_j P_j."""
        a = self.mixture_weights(pooled)
        prompts = torch.cat([self.sources, self.embeddings[None]])
        return self.embeddings[None] + torch.einsum("bk,knd->bnd", a, prompts)

    @contextlib.contextmanager
    def rows(self, tables: Tensor):
        previous, self._rows = self._rows, tables
        try:
            yield
        finally:
            self._rows = previous

    def row_table(self) -> Tensor | None:
        return self._rows

    def prefix_embeddings(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> Tensor | None:
        """(b, n, d) with each row's soft tokens while rows are set; (1, n, d) otherwise (and for text alone)."""
        if self._rows is None or not any(isinstance(s, SoftSlot) for s in segments):
            return super().prefix_embeddings(backbone, segments)
        b, dtype = self._rows.shape[0], backbone.embedding_matrix.dtype
        parts = []
        for s in segments:
            if isinstance(s, SoftSlot):
                start, end = self._offsets[s.index]
                parts.append(self._rows[:, start:end].to(dtype))
            elif len(s):
                parts.append(backbone.embed(s)[None].expand(b, -1, -1).to(dtype))
        return torch.cat(parts, dim=1)

    def prefix_kv(self, backbone: Backbone, segments: list[Tensor | SoftSlot]) -> KV:
        if self._rows is None or not any(isinstance(s, SoftSlot) for s in segments):
            return super().prefix_kv(backbone, segments)  # P_t's, or text alone (the same for every row)
        lead, rest = split_lead(segments)
        past = self._lead_kv(backbone, lead) if lead and rest else None  # text before the soft tokens: once
        embeds = self.prefix_embeddings(backbone, rest if past is not None else segments)
        if embeds is None:
            return past or []
        b, n = embeds.shape[:2]
        start = past[0][0].shape[2] if past else 0
        positions = torch.arange(start, start + n)[None].expand(b, -1)
        _, kv = backbone.run(None, torch.ones(b, start + n, dtype=torch.long), positions, past, embeds, True)
        return kv


class MixturePromptModel(PromptModel):
    """A PromptModel whose soft tokens are each row's mixture: ``label_scores`` pools the rows' token embeddings,
    asks the method for their prompts and runs the prefix per row when it holds soft tokens."""

    method: PromptMixture
    mixes = False  # the prompt differs per row: the server scores its rows with ``score``, per task
    generates = False

    @property
    def soft_prefix(self) -> bool:
        return any(isinstance(s, SoftSlot) for s in self.segments)

    @torch.no_grad()
    def pooled(self, batch: list[list[int]]) -> Tensor:
        """(b, d) max over each row's token embeddings (its soft tokens left out)."""
        real = [[t for t in x if t >= 0] or [self.backbone.tokenizer.pad_token_id] for x in batch]
        width = max(len(x) for x in real)
        ids = torch.zeros(len(real), width, dtype=torch.long)
        mask = torch.zeros(len(real), width, dtype=torch.bool)
        for i, x in enumerate(real):
            ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), True
        emb = self.backbone.embed(ids).float()
        return emb.masked_fill(~mask.to(emb.device)[..., None], float("-inf")).max(dim=1).values

    def label_scores(self, batch: list[list[int]], prefix: KV, heads=None) -> Tensor:
        tables = self.method.tables(self.pooled(batch))
        with self.method.rows(tables):
            if self.soft_prefix:  # the prefix holds soft tokens: one per row (a caller's prefix or heads are P_t's)
                return super().label_scores(batch, self.prefix_kv(), None)
            return super().label_scores(batch, prefix, heads)  # constant prefix; the rows' soft tokens vary

    def row_inputs(self, ids: Tensor) -> tuple[Tensor | None, Tensor | None]:
        tables = self.method.row_table()
        ids = ids.to(self.backbone.device)
        soft = ids < 0
        if not soft.any():
            return ids, None
        if tables is None or tables.shape[0] != ids.shape[0]:
            raise ModelError(
                "an ATTEMPT mixture prompt differs per row: score it with eval / predict (the server's mixed batches "
                "over cached prefixes cannot)."
            )
        embeds = self.backbone.embed(ids.clamp(min=0))
        where = torch.tensor([self.method._offsets[s.index][0] + j for s, j in self._row_soft], device=ids.device)
        per_row = tables[:, where]  # (b, row soft tokens, d)
        code = (-ids - 1).clamp(min=0, max=per_row.shape[1] - 1)  # (b, t)
        picked = per_row.gather(1, code[..., None].expand(-1, -1, per_row.shape[2]))
        return None, torch.where(soft[..., None], picked.to(embeds.dtype), embeds)

    def generate(self, fields: dict, config=None) -> str:
        raise ModelError("an ATTEMPT mixture artifact classifies (eval / predict); it does not generate text.")


class MixtureTask(PromptTask):
    """A label-word task whose prompt is an ATTEMPT mixture; saved and loaded as its own kind of artifact."""

    model: MixturePromptModel

    @classmethod
    def build(
        cls, backbone: Backbone, template: Template, verbalizer: Verbalizer, config: dict, seed: int = 0
    ) -> MixtureTask:
        cfg = MixtureConfig.from_dict(config)
        torch.manual_seed(seed)  # the attention module's init
        gen = torch.Generator().manual_seed(seed)
        model = MixturePromptModel(
            backbone,
            template,
            verbalizer,
            lambda slots, ctx: PromptMixture(cfg, backbone, slots, ctx),
            cfg.num_virtual_tokens,
            generator=gen,
        )
        return cls(model, METHOD, cfg.to_dict())

    def manifest_fields(self) -> dict:
        return super().manifest_fields() | {"mixture": self.manifest["mixture"]}  # pack, its checksum, sources

    @classmethod
    def reads(cls, manifest: dict) -> bool:
        return bool(manifest.get("mixture")) and not manifest.get("pack")

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict, weights: dict, backbone: Backbone) -> MixtureTask:
        try:
            task = cls.build(
                backbone,
                Template.from_spec(manifest["template"]),
                Verbalizer.from_dict(manifest["verbalizer"]),
                manifest["method_config"],
            )
            task.model.method.load_trainable_state(weights)
        except (RuntimeError, KeyError, DataError) as e:
            raise ArtifactError(f"{path}: the mixture's weights or settings do not fit ({e}).") from None
        task.manifest = manifest
        return task


def mixture_sources(path: Path, manifest: dict, weights: dict[str, Tensor]) -> tuple[Tensor, list[str]]:
    """(K, n, d) the pack's distinct task prompts and their tasks' names (a prompt several tasks share: once)."""
    pack = manifest.get("pack")
    if not pack:
        raise ArtifactError(
            f"--init-from {path}: a single-task artifact, not a pack; the mixture reads a pack's source prompts "
            "(`prompttune train-multi --method mpt` or `prompttune continual --method progressive`)."
        )
    tables, names = [], []
    for entry in pack["tasks"]:
        name = entry["name"]  # its own prompt (progressive: without the earlier ones), as --source-task NAME reads it
        table = weights.get(f"params.own_{name}", weights.get(f"tasks.{name}"))
        if table is None:
            raise ArtifactError(f"{path}: the weights of task {entry['name']} are missing; train the pack again.")
        if not any(torch.equal(table, t) for t in tables):
            tables.append(table)
            names.append(entry["name"])
    if len(tables) < 2:
        raise DataError(
            f"--source-task mixture: the {pack['strategy']} pack {path} has no separate source prompts (its "
            f"{len(pack['tasks'])} task(s) read one prompt); the mixture needs at least two. Use an mpt or "
            "progressive pack, or start from this one with --source-task shared."
        )
    if len(tables) > MAX_SOURCES:
        raise DataError(f"--source-task mixture: {len(tables)} source prompts, more than the limit of {MAX_SOURCES}.")
    if len({tuple(t.shape) for t in tables}) > 1:
        raise DataError(f"--source-task mixture: the task prompts of {path} differ in size; train the pack again.")
    return torch.stack(tables).float(), names


def mixture_task(task: PromptTask, init_from: str | Path) -> tuple[MixtureTask, str]:
    """The target task as an ATTEMPT mixture over the pack's source prompts, its target prompt starting at the
    task's own fresh prompt (same template, labels and init as prompt tuning)."""
    path = Path(init_from)
    manifest, weights = artifact.read(path)
    sources, names = mixture_sources(path, manifest, weights)
    b = task.backbone
    artifact.check_backbone(path, manifest, b.model_id, b.fingerprint())
    method = task.model.method
    plain = isinstance(method, PromptTuning) and type(method).table is PromptTuning.table  # the table is the weights
    own = method.table() if plain else None
    if own is None:
        raise DataError("--source-task mixture: mixes prompt tuning's soft tokens; train with --method prompt-tuning.")
    if tuple(own.shape) != tuple(sources.shape[1:]):
        raise shape_mismatch(f"each source prompt of {path}", tuple(sources.shape[1:]), tuple(own.shape))
    config = {**task.method_config, "sources": len(names)}
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # follows the run's seed (PromptTask.create seeded torch)
    mixed = MixtureTask.build(b, task.model.template, task.model.verbalizer, config, seed)
    with torch.no_grad():
        mixed.model.method.embeddings.copy_(own.detach().float())
        mixed.model.method.set_sources(sources)
    mixed.manifest = {"mixture": {"pack": str(path), "pack_sha256": manifest.get("weights_sha256"), "sources": names}}
    return mixed, f"a mixture of the {len(names)} source prompts of {path} ({', '.join(names)})"
