"""Export a prompt (all its versions and labels, or one version) as one JSON file, and import it back.

Every version carries its content hash; import recomputes it and refuses a file whose content does not
match, so a shared file cannot smuggle in different text under a known version.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from prompttune.core import atomic
from prompttune.registry.names import RegistryError, check_label, check_name, parse_ref
from prompttune.registry.store import KINDS, Registry, Version, content_hash

FORMAT = "prompttune-registry-export"
FORMAT_VERSION = 1


def export(registry: Registry, ref: str, path: Path) -> list[Version]:
    parsed = parse_ref(ref)
    if parsed.selector is None:
        chosen = [registry.get(f"{v.ref}") for v in registry.versions(parsed.name)]
    else:
        chosen = [registry.get(parsed)]
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": parsed.name,
        "kind": chosen[0].kind,
        "versions": [
            {
                "number": v.number,
                "hash": v.hash,
                "content": v.content,
                "payload": base64.b64encode(v.payload).decode() if v.payload is not None else None,
                "provenance": v.provenance,
                "labels": v.labels,
            }
            for v in chosen
        ],
    }
    atomic.write_text(Path(path), json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return chosen


def read_export(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: file not found.") from None
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RegistryError(f"{path}: not a prompttune registry export (made by `prompttune registry export`).")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise RegistryError(f"{path}: made by a newer prompttune (format {doc['format_version']}); upgrade.")
    check_name(doc.get("name", ""))
    if doc.get("kind") not in KINDS or not isinstance(doc.get("versions"), list) or not doc["versions"]:
        raise RegistryError(f"{path}: damaged (kind or versions missing).")
    for i, v in enumerate(doc["versions"], start=1):
        if not isinstance(v, dict) or not isinstance(v.get("content"), dict):
            raise RegistryError(f"{path}: version entry {i} is damaged (no content).")
        payload = base64.b64decode(v["payload"]) if v.get("payload") is not None else None
        if content_hash(doc["kind"], v["content"], payload) != v.get("hash"):
            raise RegistryError(
                f"{path}: version entry {i} (v{v.get('number')}) does not match its hash; the file was changed."
            )
        v["payload_bytes"] = payload
        for label in v.get("labels", []):
            check_label(label)
    return doc


def import_(registry: Registry, path: Path, name: str | None = None) -> list[tuple[Version, bool]]:
    """Add the file's versions (oldest first; ones already present are found, not duplicated) and labels."""
    doc = read_export(path)
    target = check_name(name) if name else doc["name"]
    results = []
    for v in sorted(doc["versions"], key=lambda v: v.get("number", 0)):
        prov = {**v.get("provenance", {}), "imported_from": str(path)}
        version, created = registry.add(target, doc["kind"], v["content"], v["payload_bytes"], prov)
        for label in v.get("labels", []):
            registry.set_label(version.ref, label)
        results.append((version, created))
    return results
