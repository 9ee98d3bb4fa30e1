"""What goes into a registry version and comes back out: templates, soft-prompt artifacts, diffs.

A template version stores the template's spec (``Template.to_dict``). A soft-prompt version stores the
artifact's manifest as content and its ``weights.safetensors`` bytes as payload; it is written back to
a directory (atomically) to be loaded like any artifact.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import json
from pathlib import Path

from prompttune.core import artifact, atomic
from prompttune.core.template import Template
from prompttune.registry.names import RegistryError
from prompttune.registry.store import Registry, Version


def author() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


def load_source(source: str) -> tuple[str, dict, bytes | None, dict]:
    """(kind, content, payload, provenance found in it) from an artifact dir, a template file or a built-in name."""
    path = Path(source)
    if path.is_dir():
        manifest, _ = artifact.read(path)  # validates the manifest and that the weights read as safetensors
        weights = path / artifact.WEIGHTS
        payload = weights.read_bytes() if weights.exists() else b""
        data = manifest.get("data", {})
        metrics = manifest.get("metrics", {})
        found = {
            "model": manifest["backbone"].get("id"),
            "data_hash": data.get("train_hash"),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
            "source": str(path),
        }
        return "soft-prompt", manifest, payload, found
    template = Template.from_spec(source)  # a built-in name, a .yaml/.json file, or a one-string template
    return "template", template.to_dict(), None, {"source": source}


def add_source(registry: Registry, name: str, source: str, provenance: dict) -> tuple[Version, bool]:
    kind, content, payload, found = load_source(source)
    given = {k: v for k, v in provenance.items() if v not in (None, {}, "")}
    prov = {"author": author(), **{k: v for k, v in found.items() if v not in (None, {})}, **given}
    return registry.add(name, kind, content, payload, prov)


def as_template(version: Version) -> Template:
    if version.kind != "template":
        raise RegistryError(f"registry: {version.ref} is a {version.kind}, not a template.")
    return Template.from_spec(version.content)


def materialize(version: Version, out_dir: Path) -> Path:
    """Write a soft-prompt version back as an artifact directory."""
    if version.kind != "soft-prompt":
        raise RegistryError(f"registry: {version.ref} is a {version.kind}, not a soft-prompt artifact.")
    if version.payload is None:
        raise RegistryError(f"registry: {version.ref} was read without its weights.")

    def fill(tmp: Path) -> None:
        atomic.write_json(tmp / artifact.MANIFEST, version.content)
        (tmp / artifact.WEIGHTS).write_bytes(version.payload)

    atomic.write_dir(out_dir, fill)
    return out_dir


def _lines(version: Version) -> list[str]:
    if version.kind == "template":
        body = Template.from_dict(version.content).to_yaml()  # the spec's own key order
    else:
        body = json.dumps(version.content, indent=2, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(version.payload).hexdigest() if version.payload is not None else "none"
        body += f"\nweights.safetensors sha256 {digest}\n"
    prov = json.dumps(version.provenance, indent=2, sort_keys=True, ensure_ascii=False)
    return (body + "\n# provenance\n" + prov + "\n").splitlines(keepends=True)


def diff(a: Version, b: Version) -> str:
    """A unified diff of two versions' content and provenance (empty when they are the same)."""
    return "".join(difflib.unified_diff(_lines(a), _lines(b), a.ref + f" ({a.hash[:12]})", b.ref + f" ({b.hash[:12]})"))
