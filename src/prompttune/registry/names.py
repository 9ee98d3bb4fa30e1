"""Names, labels and references in the prompt registry, checked before they reach the database.

A reference is ``name`` (the latest version), ``name@v3`` (version 3), ``name@production`` (what the
label points at) or ``name@1f3a9c`` (a hash prefix, at least 4 hex digits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prompttune.core.errors import PromptTuneError

# Letters, digits and . _ - only, starting with a letter or digit: no '/', '..', quotes, ';' or spaces,
# so a name can never leave a directory when exported or change an SQL statement. Always matched with
# fullmatch: `$` would also match before a trailing newline, letting "p\n" in as a second name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_RE = re.compile(r"v([0-9]+)")  # ASCII digits only (\d would take other scripts' digits too)
HASH_PREFIX_RE = re.compile(r"[0-9a-f]{4,64}")
MAX_VERSION = 2**31 - 1  # a 32-bit INTEGER column on PostgreSQL; a larger number names no version
RESERVED_LABELS = {"latest"}


class RegistryError(PromptTuneError):
    """A registry name, reference, file or database that cannot be used."""


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise RegistryError(
            f"registry: {what} {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 128 characters)."
        )
    return name


def check_label(label: str) -> str:
    check_name(label, "label")
    if VERSION_RE.fullmatch(label) or label in RESERVED_LABELS:
        raise RegistryError(f"registry: label {label!r} is reserved (it reads as a version); choose another name.")
    return label


@dataclass(frozen=True)
class Ref:
    name: str
    selector: str | None = None  # None: latest

    def __str__(self) -> str:
        return self.name if self.selector is None else f"{self.name}@{self.selector}"


def parse_ref(text: str) -> Ref:
    name, sep, selector = text.partition("@")
    check_name(name)
    if not sep:
        return Ref(name)
    if not selector:
        raise RegistryError(f"registry: {text!r} has nothing after '@'; write name@v3, name@production or name@<hash>.")
    check_name(selector, "version, label or hash")
    return Ref(name, selector)


def looks_like_ref(text: str) -> bool:
    """True for text that can only be a registry reference (name@selector), not a path or built-in name."""
    name, sep, selector = text.partition("@")
    return bool(sep) and bool(NAME_RE.fullmatch(name)) and bool(NAME_RE.fullmatch(selector)) and "/" not in text
