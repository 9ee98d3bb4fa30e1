"""Artifacts: a directory with manifest.json (what it is, how it was made) and weights.safetensors.

Weights are read with safetensors only (never unpickled). Writes go to a temporary sibling directory
that replaces the old one in one rename, so a crash never leaves a half-written artifact over a good one.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prompttune import __version__
from prompttune.core import atomic
from prompttune.core.errors import ArtifactError

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
FORMAT = "prompttune-artifact"
FORMAT_VERSION = 1


def versions() -> dict:
    import transformers

    return {
        "prompttune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def is_artifact(path: Path) -> bool:
    """Whether a folder is a prompttune artifact (its manifest says so)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output(path: str | Path, overwrite: bool, flag: str = "--out") -> None:
    """Before any training: refuse a path holding anything but an earlier artifact (replaced with ``overwrite``)."""
    atomic.check_output_dir(Path(path), flag, is_artifact, "prompttune artifact", overwrite)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def save(path: str | Path, manifest: dict, weights: dict[str, torch.Tensor], overwrite: bool = True) -> Path:
    """Write the artifact atomically. A folder holding anything but an artifact is never replaced; an earlier
    artifact is replaced only with ``overwrite``. The manifest records the weights file's SHA-256."""
    path = Path(path)
    check_output(path, overwrite)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def fill(tmp: Path) -> None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            tmp / WEIGHTS,
            metadata={"format": "pt", "method": manifest.get("method", "")},
        )
        manifest["weights_sha256"] = file_digest(tmp / WEIGHTS)
        atomic.write_json(tmp / MANIFEST, manifest)

    atomic.write_dir(path, fill)
    return path


def read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact. Train one with: prompttune train DATA --out {path}")
    if not (path / MANIFEST).exists():
        inside = sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))[:3] if path.is_dir() else []
        hint = f"; it holds {' and '.join(map(str, inside))}: pass that" if inside else ""  # e.g. continual's DIR/pack
        raise ArtifactError(f"{path}: not a prompttune artifact (no {MANIFEST}){hint}.")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path / MANIFEST}: damaged ({e.msg}, line {e.lineno}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path / MANIFEST}: not a prompttune manifest.")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path}: made by a newer prompttune (format {manifest['format_version']}); upgrade.")
    missing = [k for k in ("method", "method_config", "backbone", "template", "verbalizer") if k not in manifest]
    if missing or not isinstance(manifest["backbone"], dict) or "fingerprint" not in manifest["backbone"]:
        raise ArtifactError(
            f"{path / MANIFEST}: damaged (missing {', '.join(missing) or 'backbone.fingerprint'}); "
            "train the artifact again."
        )
    try:
        weights = load_file(path / WEIGHTS) if (path / WEIGHTS).exists() else {}
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"{path / WEIGHTS}: cannot be read as safetensors ({e}).") from None
    digest = manifest.get("weights_sha256")
    if digest and (not (path / WEIGHTS).exists() or file_digest(path / WEIGHTS) != digest):
        raise ArtifactError(
            f"{path / WEIGHTS}: damaged or changed since it was saved (its SHA-256 is not the manifest's); "
            "train the artifact again or restore it from a copy."
        )
    return manifest, weights


def check_backbone(path: Path, manifest: dict, model_id: str, fingerprint: str) -> None:
    want = manifest["backbone"]
    if want["fingerprint"] != fingerprint:
        raise ArtifactError(
            f"{path}: trained on backbone {want['id']} ({want['fingerprint']}), but the loaded backbone is "
            f"{model_id} ({fingerprint}). Load it with --model {want['id']}, or train a prompt for this backbone."
        )
