"""What a PROMPT argument names: an artifact directory, a registry reference, a template file or a built-in."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prompttune.core.errors import ArtifactError
from prompttune.core.template import BUILTIN, Template


def resolve_prompt(spec: str, db: str | None = None) -> tuple[str, Template | Path, str]:
    """("artifact", dir, shown) or ("template", Template, shown) for a path, registry ref or template name."""
    path = Path(spec)
    if path.is_dir():
        return "artifact", path, spec
    from prompttune.registry.names import looks_like_ref  # the registry (SQLAlchemy) loads only for a reference

    if looks_like_ref(spec) and not path.exists():
        from prompttune.registry import Registry
        from prompttune.registry.content import StoredTemplate, as_template, materialize

        registry = Registry(db)
        version = registry.get(spec)
        shown = f"{spec} ({version.ref}, {version.hash[:12]})"
        if version.kind == "soft-prompt":
            out = Path(tempfile.mkdtemp(prefix="prompttune-registry-")) / version.name
            return "artifact", materialize(version, out), shown
        template = as_template(version)
        if isinstance(template, StoredTemplate):  # eval reads these words unless --verbalizer is given
            shown = f"{spec} ({version.ref}, {version.hash[:12]}, its stored label words)"
        return "template", template, shown
    if not path.exists() and spec not in BUILTIN and "{{" not in spec and "[label]" not in spec:
        raise ArtifactError(
            f"{spec}: no such artifact (nor a template file, a built-in template or a registry reference like "
            f"name@production). Train one with: prompttune train DATA --out {spec}"
        )
    return "template", Template.from_spec(spec), spec
