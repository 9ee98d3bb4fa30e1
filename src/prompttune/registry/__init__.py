"""The prompt registry: templates and trained soft prompts, versioned, labelled and shareable.

from prompttune.registry import Registry
reg = Registry()                              # $PROMPTTUNE_REGISTRY, else registry.db in the user data dir
version, created = reg.add("sst2", "template", Template.from_spec("classify").to_dict())
reg.set_label("sst2@v1", "production")
reg.get("sst2@production")
"""

from prompttune.registry.names import RegistryError, parse_ref
from prompttune.registry.store import Registry, Version

__all__ = ["Registry", "RegistryError", "Version", "parse_ref"]
