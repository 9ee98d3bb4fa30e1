"""What goes into a registry version and comes back out: templates, soft-prompt artifacts, diffs.

A template version stores the template's spec (``Template.to_dict``) and, when it was added with
``--verbalizer``, its label words under ``verbalizer`` (label -> words): a metric measured with those
words can then be reproduced from the registry entry alone, and ``prompttune eval name@label DATA``
reads them unless ``--verbalizer`` is given. The words are part of the content hash (other words, other
version); a version without them hashes as it always did. A soft-prompt version stores the artifact's
manifest as content and its ``weights.safetensors`` bytes as payload; it is written back to a directory
(atomically) to be loaded like any artifact, with the verbalizer its manifest already holds.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from prompttune.core import artifact, atomic
from prompttune.core.errors import DataError
from prompttune.core.template import Template, dump_yaml
from prompttune.core.verbalizer import Verbalizer
from prompttune.registry.names import RegistryError
from prompttune.registry.store import Registry, Version

VERBALIZER = "verbalizer"  # the content key of a template version's label words
MAX_VERBALIZER_BYTES = 64 * 1024  # label words stored with one version, as JSON


@dataclass(frozen=True)
class StoredTemplate(Template):
    """A registry template with the label words it was stored with; eval reads them by default."""

    label_words: tuple = ()  # ((label, (word, ...)), ...)

    def words(self) -> dict[str, list[str]]:
        return {label: list(words) for label, words in self.label_words}

    def stored_verbalizer(self, labels: list[str]) -> Verbalizer:
        """The stored words over the data's labels (a label without words reads as itself)."""
        try:
            return Verbalizer(list(labels), self.words())
        except DataError as e:
            raise DataError(
                f"{e} (these are the label words stored with the registry template; give --verbalizer to use others)"
            ) from None


def author() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


def parse_verbalizer(spec: str) -> dict[str, list[str]]:
    """``--verbalizer`` for a registry template: label -> words, as 'pos=great|good;neg=bad' or a JSON file.

    The data's labels are not known yet, so the labels are the ones the spec names (checked against the
    data when the template is evaluated).
    """
    if spec.endswith(".json"):
        path = Path(spec)
        if path.is_file() and path.stat().st_size > MAX_VERBALIZER_BYTES:
            raise RegistryError(f"--verbalizer {spec}: larger than {MAX_VERBALIZER_BYTES // 1024} KiB of label words.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except UnicodeDecodeError as e:
            raise RegistryError(f"--verbalizer {spec}: not UTF-8 text (byte {e.start}); give a JSON file.") from None
        except json.JSONDecodeError:
            raw = None  # Verbalizer.parse says what is wrong with it
        names = list(raw) if isinstance(raw, dict) else ["?"]
    else:
        names = [part.partition("=")[0].strip() for part in spec.split(";") if part.strip()]
    if any(not str(label).strip() for label in names):
        raise RegistryError(f"--verbalizer {spec!r}: a label name is empty; write e.g. 'positive=great;negative=bad'.")
    if not names:
        raise RegistryError(f"--verbalizer {spec!r}: no label=word pairs; write e.g. 'positive=great;negative=bad'.")
    try:
        words = Verbalizer.parse(list(dict.fromkeys(names)), spec).words
    except DataError as e:
        raise RegistryError(str(e)) from None
    size = len(json.dumps(words, ensure_ascii=False).encode())
    if size > MAX_VERBALIZER_BYTES:
        raise RegistryError(
            f"--verbalizer: {size // 1024} KiB of label words; a registry version keeps at most "
            f"{MAX_VERBALIZER_BYTES // 1024} KiB."
        )
    return words


def template_words(version: Version) -> dict[str, list[str]] | None:
    """The label words a template version was stored with, or None."""
    words = version.content.get(VERBALIZER) if version.kind == "template" else None
    return {label: list(w) for label, w in words.items()} if words else None


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


def add_source(
    registry: Registry, name: str, source: str, provenance: dict, verbalizer: str | None = None
) -> tuple[Version, bool]:
    kind, content, payload, found = load_source(source)
    if verbalizer:
        if kind != "template":
            raise RegistryError(f"--verbalizer: {source} is a soft-prompt artifact; its manifest holds its own words.")
        content = {**content, VERBALIZER: parse_verbalizer(verbalizer)}
    given = {k: v for k, v in provenance.items() if v not in (None, {}, "")}
    prov = {"author": author(), **{k: v for k, v in found.items() if v not in (None, {})}, **given}
    return registry.add(name, kind, content, payload, prov)


def as_template(version: Version) -> Template:
    """The version's template; a StoredTemplate that carries its label words when it was stored with some."""
    if version.kind != "template":
        raise RegistryError(f"registry: {version.ref} is a {version.kind}, not a template.")
    spec = {k: v for k, v in version.content.items() if k != VERBALIZER}
    template = Template.from_dict(spec, f"registry {version.ref}")
    words = template_words(version)
    if not words:
        return template
    fields = {f: getattr(template, f) for f in template.__dataclass_fields__}
    return StoredTemplate(**fields, label_words=tuple((label, tuple(w)) for label, w in words.items()))


def describe(version: Version) -> str:
    """The version's content as a person reads it: a template's YAML (label words last), or the manifest."""
    if version.kind != "template":
        return json.dumps(version.content, indent=2, ensure_ascii=False)
    spec = {k: v for k, v in version.content.items() if k != VERBALIZER}
    body = Template.from_dict(spec, f"registry {version.ref}").to_yaml()  # the spec's own key order
    words = template_words(version)
    return body + (dump_yaml({VERBALIZER: words}) if words else "")


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
        body = describe(version)
    else:
        body = json.dumps(version.content, indent=2, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(version.payload).hexdigest() if version.payload is not None else "none"
        body += f"\nweights.safetensors sha256 {digest}\n"
    prov = json.dumps(version.provenance, indent=2, sort_keys=True, ensure_ascii=False)
    return (body + "\n# provenance\n" + prov + "\n").splitlines(keepends=True)


def diff(a: Version, b: Version) -> str:
    """A unified diff of two versions' content and provenance (empty when they are the same)."""
    return "".join(difflib.unified_diff(_lines(a), _lines(b), a.ref + f" ({a.hash[:12]})", b.ref + f" ({b.hash[:12]})"))
