"""PEFT interop: export an artifact as a PEFT prompt-learning adapter, and import one as an artifact.

A PEFT adapter directory is ``adapter_config.json`` + ``adapter_model.safetensors`` holding one tensor,
``prompt_embeddings``: for PROMPT_TUNING and P_TUNING the (n, hidden) virtual-token embeddings (P-tuning's
encoder already collapsed), for PREFIX_TUNING the (n, layers * 2 * kv_heads * head_dim) per-layer
key/value table (under grouped-query attention PEFT sizes it by the KV heads, as prompttune does).

Exactness: PEFT puts the virtual tokens (or the KV prefix) before the whole input. A prefix-tuning /
P-tuning v2 artifact's KV prefix already stands before all the template's text, so it exports with any
template. Prompt tuning / P-tuning tokens export exactly only when the template's soft tokens all stand
at its very start, e.g. ``'[soft]Review: {{ text }} Sentiment: [label]'``; other templates are refused.

Which PEFT type a method exports as is the method's ``peft_type`` attribute; its ``table()`` is the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prompttune.api import PromptTask, load
from prompttune.core import artifact, atomic
from prompttune.core.backbone import Backbone
from prompttune.core.errors import ArtifactError, PromptTuneError
from prompttune.core.template import SoftSlot, Template

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
KEY = "prompt_embeddings"
INPUT_TYPES = ("PROMPT_TUNING", "P_TUNING")  # virtual tokens as input embeddings
KV_TYPES = ("PREFIX_TUNING",)  # a per-layer key/value prefix
EXACT_TEMPLATE = "'[soft]Review: {{ text }} Sentiment: [label]'"


def _require_peft():
    try:
        import peft
    except ImportError:
        raise PromptTuneError("--format peft needs the peft package: pip install peft") from None
    return peft


def soft_tokens_lead(task: PromptTask) -> bool:
    """Whether the template's soft tokens all stand before any text (PEFT's layout for input tokens)."""
    pm = task.model
    segments = pm.segments
    soft = [i for i, s in enumerate(segments) if isinstance(s, SoftSlot)]
    return soft == [0] and not pm.compiled.row_slots


def export_peft(
    artifact_dir: Path, out_dir: Path, model: str | Backbone | None = None, overwrite: bool = False
) -> dict:
    """Write ``out_dir/adapter_config.json`` + ``adapter_model.safetensors`` for PeftModel.from_pretrained.

    A folder holding anything but an adapter is never replaced; an earlier adapter only with ``overwrite``."""
    atomic.check_output_dir(Path(out_dir), "DIR", lambda p: (p / CONFIG).is_file(), "PEFT adapter", overwrite)
    peft = _require_peft()
    task = load(artifact_dir, model)
    method = task.model.method
    peft_type = method.peft_type
    if peft_type is None or method.table() is None:
        raise PromptTuneError(
            f"export --format peft: method {task.method_name} has no PEFT counterpart; "
            "prompt-tuning, p-tuning, prefix-tuning and p-tuning-v2 artifacts export."
        )
    backbone = task.model.backbone
    if peft_type in INPUT_TYPES and not soft_tokens_lead(task):
        raise PromptTuneError(
            f"export --format peft: {artifact_dir} ({task.method_name}) has soft tokens after the start of its "
            "template, but PEFT puts virtual tokens before the whole input, so it would predict differently. "
            f"Only templates whose soft tokens all stand at the very start export, e.g. {EXACT_TEMPLATE} "
            "(train with --template); prefix-tuning and p-tuning-v2 artifacts export with any template."
        )
    if peft_type in INPUT_TYPES and backbone.bos_ids:
        raise PromptTuneError(
            f"export --format peft: {backbone.model_id} starts every input with a BOS token, which PEFT puts after "
            "the virtual tokens; export a prefix-tuning artifact instead."
        )
    with torch.no_grad():
        table = method.table().detach().float().contiguous()
    n = table.shape[0]
    layers, kv_heads, head_dim = backbone.kv_layout
    common = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": n,
        "num_layers": layers,
        "base_model_name_or_path": backbone.model_id,
        "inference_mode": True,
        "num_transformer_submodules": 1,
    }
    if peft_type in KV_TYPES:
        config = peft.PrefixTuningConfig(
            **common, token_dim=kv_heads * head_dim, num_attention_heads=kv_heads, prefix_projection=False
        )
    elif peft_type == "P_TUNING":
        hidden = method.config.encoder_hidden
        config = peft.PromptEncoderConfig(
            **common,
            token_dim=backbone.hidden_size,
            num_attention_heads=backbone.text_config.num_attention_heads,
            encoder_hidden_size=hidden,
        )
    else:
        config = peft.PromptTuningConfig(
            **common, token_dim=backbone.hidden_size, num_attention_heads=backbone.text_config.num_attention_heads
        )

    def fill(tmp: Path) -> None:
        config.save_pretrained(str(tmp))
        save_file({KEY: table}, tmp / WEIGHTS, metadata={"format": "pt"})

    atomic.write_dir(Path(out_dir), fill)
    return {"adapter": str(out_dir), "peft_type": peft_type, "num_virtual_tokens": n, "shape": list(table.shape)}


def read_adapter(adapter_dir: Path) -> tuple[dict, torch.Tensor]:
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / CONFIG, adapter_dir / WEIGHTS
    if not config_path.is_file():
        raise ArtifactError(f"{adapter_dir}: not a PEFT adapter (no {CONFIG}).")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{config_path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    peft_type = str(config.get("peft_type", ""))
    if peft_type not in INPUT_TYPES + KV_TYPES:
        raise ArtifactError(
            f"{config_path}: peft_type {peft_type or '(none)'} is not a prompt-learning adapter prompttune reads; "
            f"it reads {', '.join(INPUT_TYPES + KV_TYPES)}."
        )
    if (config.get("num_transformer_submodules") or 1) != 1:
        raise ArtifactError(
            f"{config_path}: an encoder-decoder adapter (num_transformer_submodules 2) is not supported."
        )
    if not weights_path.is_file():
        raise ArtifactError(f"{adapter_dir}: no {WEIGHTS} (only safetensors adapters are read, never pickles).")
    try:
        tensors = load_file(weights_path)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"{weights_path}: cannot be read as safetensors ({e}).") from None
    if KEY not in tensors:
        raise ArtifactError(f"{weights_path}: no {KEY!r} tensor (has {sorted(tensors)}).")
    return config, tensors[KEY].float()


def import_peft(
    adapter_dir: Path,
    labels: list[str],
    out_dir: Path,
    template: str | None = None,
    verbalizer: str | None = None,
    model: str | Backbone | None = None,
    overwrite: bool = False,
) -> dict:
    """A PEFT prompt-learning adapter as a prompttune artifact (prompt-tuning or prefix-tuning)."""
    artifact.check_output(out_dir, overwrite)
    config, table = read_adapter(adapter_dir)
    peft_type = config["peft_type"]
    n = table.shape[0]
    if isinstance(model, Backbone):
        backbone = model
    else:
        try:
            backbone = Backbone.load(model or config.get("base_model_name_or_path"))
        except PromptTuneError as e:
            raise PromptTuneError(
                f"{e} (the adapter names {config.get('base_model_name_or_path')}; pass --model)"
            ) from None
    labels = [x.strip() for x in labels if x.strip()]
    if len(labels) < 2:
        raise PromptTuneError("import: give at least two --labels, e.g. --labels negative,positive")
    tmpl = Template.from_spec(template or "[soft]{{ text }} [label]")
    if peft_type in KV_TYPES:
        layers, kv_heads, head_dim = backbone.kv_layout
        want = layers * 2 * kv_heads * head_dim
        method, method_config = "prefix-tuning", {"num_virtual_tokens": n, "prefix_hidden": 0, "init": "vocab"}
    else:
        want = backbone.hidden_size
        method, method_config = "prompt-tuning", {"num_virtual_tokens": n, "init": "vocab"}
    if table.ndim != 2 or table.shape[1] != want:
        raise ArtifactError(
            f"{adapter_dir}: {KEY} has shape {tuple(table.shape)}, but {backbone.model_id} needs (n, {want}) for "
            f"{peft_type}; import it onto the model it was trained for (--model)."
        )
    task = PromptTask.create(backbone, labels, method, method_config, tmpl, verbalizer=verbalizer)
    if peft_type in INPUT_TYPES:
        slots = task.model.compiled.slot_sizes
        if not soft_tokens_lead(task) or slots != [n]:
            raise PromptTuneError(
                f"import: PEFT puts the adapter's {n} virtual tokens before the whole input; the --template must "
                f"start with its one soft slot ([soft] or [soft:{n}]) and have no other, e.g. {EXACT_TEMPLATE}."
            )
    task.model.method.load_table(table)
    task.model.clear_cache()
    task.save(
        out_dir,
        {"imported_from": {"format": "peft", "peft_type": peft_type, "path": str(adapter_dir)}},
        overwrite=overwrite,
    )
    return {"artifact": str(out_dir), "method": method, "peft_type": peft_type, "num_virtual_tokens": n}
