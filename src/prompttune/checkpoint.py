"""Training checkpoints: the Trainer's state written at every validation (safetensors + JSON, atomically),
and read back by ``--resume`` after checking the settings and the data match. ``self`` below is the Trainer,
``result`` its TrainResult."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prompttune.core import atomic
from prompttune.core.errors import PromptTuneError


def save_checkpoint(self, step: int, kept, result) -> None:
    """Write the Trainer's whole state (parameters, the kept best states, the moving average, the optimizer)
    atomically. ``kept`` is the run's KeptStates."""
    opt = self.optimizer.state_dict()
    tensors = {f"param.{k}": v.cpu().contiguous() for k, v in self.parts.trainable_state().items()}
    kept_tensors, kept_ranks = kept.to_tensors("kept")
    tensors |= kept_tensors
    tensors |= {f"ema.{k}": v.cpu().contiguous() for k, v in (self.ema or {}).items()}
    meta_state = {}
    for pid, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.cpu().contiguous().reshape(value.shape)
            else:
                meta_state[f"{pid}.{name}"] = value
    info = {
        "step": step,
        "config": self.config.to_dict(),
        "param_groups": opt["param_groups"],
        "opt_scalars": meta_state,
        "kept": kept_ranks,  # [validation value, step, validation loss] of each kept state, best first
        "result": {**asdict(result)},
        "data": self.data_fingerprint,
    }

    def fill(tmp: Path) -> None:
        save_file(tensors, tmp / "state.safetensors")
        atomic.write_json(tmp / "state.json", info)

    atomic.write_dir(self.checkpoint_dir, fill)


def load_checkpoint(self, result, kept):
    """(step, result so far) from the checkpoint, after checking it was made with these settings; the kept best
    states go back into ``kept`` (a KeptStates)."""
    d = self.checkpoint_dir
    if d is None or not (d / "state.json").exists():
        raise PromptTuneError(
            f"--resume: no checkpoint in {d}; start without --resume (a checkpoint is written at every validation)."
        )
    info = json.loads((d / "state.json").read_text())
    # a setting added after the checkpoint was written reads as its default
    saved = {
        k: v
        for k, v in (type(self.config)().to_dict() | info["config"]).items()
        if k not in ("max_steps", "epochs", "patience")
    }
    now = {k: v for k, v in self.config.to_dict().items() if k not in ("max_steps", "epochs", "patience")}
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
        raise PromptTuneError(f"--resume: the checkpoint in {d} was made with other settings {diff}.")
    if info.get("data") and self.data_fingerprint and info["data"] != self.data_fingerprint:
        raise PromptTuneError(
            f"--resume: the checkpoint in {d} was trained on other rows (data {info['data']}, now "
            f"{self.data_fingerprint}); resume with the same DATA, --val and --limit, or start without --resume."
        )
    tensors = load_file(d / "state.safetensors")
    device = self.params[0].device if self.params else torch.device("cpu")  # the moving average lives there
    tensors = {k: v if k.startswith("opt.") else v.to(device) for k, v in tensors.items()}
    self.parts.load_trainable_state({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
    if "kept" in info:
        kept.load({k: v for k, v in tensors.items() if k.startswith("kept.")}, info["kept"], "kept")
    else:  # written before several states were kept: its one best state
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        r = info["result"]
        kept.entries = [(r.get("best_val", r.get("best_val_accuracy", 0.0)), r["best_step"], best, None)]
    self.ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in info["opt_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    r = info["result"]
    fields_ = ("steps", "train_seconds", "train_examples", "eval_seconds", "best_step")
    result = type(result)(metric=result.metric, **{k: r[k] for k in fields_})
    # checkpoints written before the metric was named kept it as "best_val_accuracy" / "val_accuracy"
    result.planned_steps = r.get("planned_steps", 0)  # older checkpoints: the configured total
    result.planned_from = r.get("planned_from", 0)
    result.best_val = r.get("best_val", r.get("best_val_accuracy", 0.0))
    result.history = [
        {"step": h["step"], "val": h.get("val", h.get("val_accuracy"))}
        | {k: h[k] for k in ("loss", "val_loss") if k in h}
        for h in r["history"]
    ]
    return info["step"], result
