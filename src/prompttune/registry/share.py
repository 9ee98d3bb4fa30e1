"""Export a prompt (all its versions and labels, or one version) as one JSON file, and import it back.

Every version carries its content hash; import recomputes it and refuses a file whose content does not
match, so a shared file cannot smuggle in different text under a known version. Since format 2 the file
also carries a ``digest``: the SHA-256 of everything else in it (provenance and its metrics, labels,
version numbers, name), so editing a recorded accuracy or moving a label in the file is refused too.

A digest is not a signature: someone who edits the file and recomputes it is not stopped. It tells you the
file is the one ``export`` wrote, not who wrote it; trust a file's provenance as far as you trust its
source. A format 1 file (no digest) still imports; its provenance is unchecked, and import says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from prompttune.core import atomic
from prompttune.registry.names import RegistryError, check_label, check_name, parse_ref
from prompttune.registry.store import KINDS, Registry, Version, content_hash

FORMAT = "prompttune-registry-export"
FORMAT_VERSION = 2
DIGEST_FROM = 2  # the first format whose files carry a digest
MAX_EXPORT_BYTES = 512 << 20


def digest(doc: dict) -> str:
    """SHA-256 of the document without its digest field (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


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
    doc["digest"] = digest(doc)
    atomic.write_text(Path(path), json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return chosen


def read_export(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: file not found.")
    if path.stat().st_size > MAX_EXPORT_BYTES:
        raise RegistryError(f"{path}: larger than {MAX_EXPORT_BYTES >> 20} MiB, the most an import reads.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RegistryError(f"{path}: not UTF-8 text (byte {e.start}); not a registry export.") from None
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RegistryError(f"{path}: not a prompttune registry export (made by `prompttune registry export`).")
    fmt = doc.get("format_version", 0)
    if not isinstance(fmt, int) or fmt < 1:
        raise RegistryError(f"{path}: damaged (format_version {fmt!r}).")
    if fmt > FORMAT_VERSION:
        raise RegistryError(f"{path}: made by a newer prompttune (format {fmt}); upgrade.")
    check_name(doc.get("name", ""))
    if doc.get("kind") not in KINDS or not isinstance(doc.get("versions"), list) or not doc["versions"]:
        raise RegistryError(f"{path}: damaged (kind or versions missing).")
    payloads = []
    for i, v in enumerate(doc["versions"], start=1):
        if not isinstance(v, dict) or not isinstance(v.get("content"), dict):
            raise RegistryError(f"{path}: version entry {i} is damaged (no content).")
        labels = v.get("labels", [])
        ok = isinstance(v.get("provenance", {}), dict) and isinstance(v.get("number"), int)
        if not ok or not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise RegistryError(f"{path}: version entry {i} is damaged (number, provenance or labels).")
        try:
            payload = base64.b64decode(v["payload"], validate=True) if v.get("payload") is not None else None
        except (TypeError, ValueError):
            raise RegistryError(f"{path}: version entry {i} is damaged (its payload is not base64).") from None
        if content_hash(doc["kind"], v["content"], payload) != v.get("hash"):
            raise RegistryError(
                f"{path}: version entry {i} (v{v.get('number')}) does not match its hash; the file was changed."
            )
        payloads.append(payload)
        for label in labels:
            check_label(label)
    # Content checked, now the rest: provenance (metrics), labels, numbers (before payload_bytes is added).
    if fmt >= DIGEST_FROM and doc.get("digest") != digest(doc):
        raise RegistryError(
            f"{path}: the file was changed after export (its digest does not match: provenance, metrics, labels "
            "or version numbers were edited). Export it again from the registry it came from."
        )
    doc["provenance_checked"] = fmt >= DIGEST_FROM
    for v, payload in zip(doc["versions"], payloads, strict=True):
        v["payload_bytes"] = payload
    return doc


def import_(registry: Registry, path: Path, name: str | None = None) -> list[tuple[Version, bool]]:
    """Add the file's versions (oldest first; ones already present are found, not duplicated) and labels."""
    return import_doc(registry, read_export(path), path, name)


def import_doc(registry: Registry, doc: dict, path: Path, name: str | None = None) -> list[tuple[Version, bool]]:
    """Import a document read by ``read_export`` (its ``provenance_checked`` says whether a digest covered it)."""
    target = check_name(name) if name else doc["name"]
    results = []
    for v in sorted(doc["versions"], key=lambda v: v["number"]):
        prov = {**v.get("provenance", {}), "imported_from": str(path)}
        if not doc["provenance_checked"]:
            prov["provenance_checked"] = False  # a format 1 file: nothing covered what it claims
        version, created = registry.add(target, doc["kind"], v["content"], v["payload_bytes"], prov)
        for label in v.get("labels", []):
            registry.set_label(version.ref, label)
        results.append((version, created))
    return results
