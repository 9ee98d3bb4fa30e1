"""`prompttune templates | registry | chain`: hard prompts from the command line.

Typer sub-apps registered in cli.py; heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prompttune.core.errors import PromptTuneError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

templates_app = typer.Typer(no_args_is_help=True, help="Built-in prompt templates: list, show, render.")
registry_app = typer.Typer(
    no_args_is_help=True,
    help="Versioned templates and soft prompts in a database (SQLite by default; PostgreSQL by URL).",
)
chain_app = typer.Typer(no_args_is_help=True, help="Pipelines of templates where one step's output feeds the next.")

VarOpt = Annotated[
    list[str] | None,
    typer.Option("--var", help="A variable, NAME=VALUE (NAME=@FILE reads the value from a file); repeatable."),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Registry database: a path (SQLite) or a URL (postgresql://...). Default: "
        "$PROMPTTUNE_REGISTRY, else registry.db in the user data dir.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def parse_vars(items: list[str] | None, flag: str = "--var") -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise PromptTuneError(f"{flag} {item!r}: write NAME=VALUE (or NAME=@file.txt).")
        if value.startswith("@") and len(value) > 1:
            path = Path(value[1:])
            if not path.is_file():
                raise PromptTuneError(f"{flag} {name}=@{path}: file not found.")
            value = path.read_text(encoding="utf-8")
        values[name.strip()] = value
    return values


def resolve_template(spec: str, db: str | None):
    from prompttune.registry.resolve import resolve_prompt

    kind, target, _ = resolve_prompt(spec, db)
    if kind != "template":
        raise PromptTuneError(f"{spec}: is a soft-prompt artifact, not a template.")
    return target


# --- templates ----------------------------------------------------------------------------------------
@templates_app.command("list")
def templates_list(as_json: JsonOpt = False) -> None:
    """The built-in templates, their variables and what each is for."""
    from prompttune.core.template import BUILTIN, Template

    rows = []
    for name in BUILTIN:
        t = Template.from_spec(name)
        variables = [n if d is None else f"{n}={d!r}" for n, _, d in t.declared]
        rows.append({"name": name, "variables": variables, "description": t.description})
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table("name", "variables", "description")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["variables"]), r["description"])
    out.print(table)


@templates_app.command("show")
def templates_show(
    name: Annotated[str, typer.Argument(help="A built-in name, a template file, or a registry reference.")],
    db: DbOpt = None,
) -> None:
    """A template's full definition, as YAML (save it to a file to start your own)."""
    out.print(resolve_template(name, db).to_yaml(), markup=False, highlight=False, end="")


@templates_app.command("render")
def templates_render(
    name: Annotated[str, typer.Argument(help="A built-in name, a template file, or a registry reference.")],
    var: VarOpt = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated label words for {{ labels }}.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Lay the turns out with this backbone's chat template.")
    ] = None,
    messages: Annotated[bool, typer.Option("--messages", help="Print the chat messages as JSON instead.")] = False,
    db: DbOpt = None,
) -> None:
    """The exact text the model reads, with the variables filled in (soft slots left out)."""
    template = resolve_template(name, db)
    values = parse_vars(var)
    label_words = [w.strip() for w in labels.split(",")] if labels else []
    template.check_values(values, "--var")
    if messages:
        msgs, answer = template.render_messages(values, label_words)
        sys.stdout.write(json.dumps({"messages": msgs, "answer_prefix": answer}, ensure_ascii=False, indent=1) + "\n")
        return
    from prompttune.core.defaults import load_tokenizer

    sys.stdout.write(template.render(values, load_tokenizer(model), label_words) + "\n")


# --- registry -----------------------------------------------------------------------------------------
def _registry(db: str | None):
    from prompttune.registry import Registry

    return Registry(db)


@registry_app.command("add")
def registry_add(
    name: Annotated[str, typer.Argument(help="The prompt's name (letters, digits, . _ -).")],
    source: Annotated[
        str, typer.Argument(help="A soft-prompt artifact directory, a template file (.yaml/.json) or a built-in name.")
    ],
    label: Annotated[list[str] | None, typer.Option("--label", help="Point this label at the version.")] = None,
    author: Annotated[str | None, typer.Option(help="Who made it (default: the user name).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="The backbone it is for (artifacts: recorded).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Data it was made or measured on: its content hash is kept.")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="A measured figure, NAME=NUMBER; repeatable.")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="A note on this version.")] = None,
    verbalizer: Annotated[
        str | None,
        typer.Option(
            help="Templates: the label words to keep with it, 'positive=great|good;negative=bad' or a .json file; "
            "`prompttune eval NAME@LABEL DATA` uses them unless given --verbalizer.",
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a version (the same content again gives back the existing version)."""
    from prompttune.registry.content import add_source

    metrics = {}
    for k, v in parse_vars(metric, "--metric").items():
        try:
            metrics[k] = float(v)
        except ValueError:
            raise PromptTuneError(f"--metric {k}={v}: the value must be a number.") from None
    data_hash = None
    if data is not None:
        from prompttune.core.data import load_rows

        data_hash = load_rows(data).fingerprint()
    prov = {"author": author, "model": model, "data_hash": data_hash, "metrics": metrics, "message": message}
    registry = _registry(db)
    version, created = add_source(registry, name, source, prov, verbalizer)
    for lab in label or []:
        version = registry.set_label(version.ref, lab)
    if as_json:
        sys.stdout.write(json.dumps(_summary(version) | {"created": created}) + "\n")
        return
    state = "added" if created else "already there as"
    labels = f" [{', '.join(version.labels)}]" if version.labels else ""
    out.print(f"{state} {version.ref} ({version.kind}, {version.hash[:12]}){labels}", highlight=False, markup=False)


def _summary(v) -> dict:
    return {
        "ref": v.ref,
        "name": v.name,
        "version": v.number,
        "kind": v.kind,
        "hash": v.hash,
        "labels": v.labels,
        "provenance": v.provenance,
    }


@registry_app.command("list")
def registry_list(
    name: Annotated[str | None, typer.Argument(help="List this prompt's versions (default: all prompts).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Prompts with their versions and labels, or one prompt's versions."""
    registry = _registry(db)
    if name is None:
        names = registry.names()
        if as_json:
            rows = [{"name": n, "kind": k, "versions": c, "labels": lab} for n, k, c, lab in names]
            sys.stdout.write(json.dumps(rows) + "\n")
            return
        table = Table("name", "kind", "versions", "labels")
        for n, k, c, lab in names:
            table.add_row(n, k, str(c), ", ".join(f"{a}=v{b}" for a, b in lab.items()))
        out.print(table)
        return
    versions = registry.versions(name)
    if as_json:
        sys.stdout.write(json.dumps([_summary(v) for v in versions]) + "\n")
        return
    table = Table("version", "hash", "labels", "author", "time", "metrics")
    for v in versions:
        p = v.provenance
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in (p.get("metrics") or {}).items())
        table.add_row(f"v{v.number}", v.hash[:12], ", ".join(v.labels), p.get("author", ""), p.get("time", ""), metrics)
    out.print(table)


@registry_app.command("show")
def registry_show(
    ref: Annotated[str, typer.Argument(help="name, name@v3, name@production or name@<hash prefix>.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: hash, labels, provenance and content (a template's stored label words included)."""
    from prompttune.core.template import dump_yaml
    from prompttune.registry.content import describe

    v = _registry(db).get(ref, payload=False)
    if as_json:
        sys.stdout.write(json.dumps(_summary(v) | {"content": v.content}, ensure_ascii=False) + "\n")
        return
    out.print(f"{v.ref}  {v.kind}  sha256:{v.hash}", highlight=False)
    if v.labels:
        out.print(f"labels: {', '.join(v.labels)}", highlight=False)
    out.print(dump_yaml({"provenance": v.provenance}), markup=False, highlight=False, end="")
    out.print(describe(v), markup=False, highlight=False)


@registry_app.command("diff")
def registry_diff(
    a: Annotated[str, typer.Argument(help="The older reference.")],
    b: Annotated[str, typer.Argument(help="The newer reference.")],
    db: DbOpt = None,
) -> None:
    """A unified diff of two versions' content and provenance."""
    from prompttune.registry.content import diff

    registry = _registry(db)
    text = diff(registry.get(a), registry.get(b))
    out.print(text or "(same content)", markup=False, highlight=False, end="" if text else "\n")


@registry_app.command("label")
def registry_label(
    ref: Annotated[str, typer.Argument(help="The version the label should point at, e.g. name@v3.")],
    label: Annotated[str, typer.Argument(help="The label, e.g. production.")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the label from the prompt instead.")] = False,
    db: DbOpt = None,
) -> None:
    """Point a label at a version (it moves if it pointed elsewhere), or remove it."""
    from prompttune.registry import parse_ref

    registry = _registry(db)
    if remove:
        registry.remove_label(parse_ref(ref).name, label)
        out.print(f"removed label {label} from {parse_ref(ref).name}", highlight=False)
        return
    v = registry.set_label(ref, label)
    out.print(f"{v.name}@{label} -> {v.ref} ({v.hash[:12]})", highlight=False)


@registry_app.command("export")
def registry_export(
    ref: Annotated[str, typer.Argument(help="A prompt (all versions and labels) or one version.")],
    file: Annotated[Path, typer.Argument(help="The JSON file to write.")],
    db: DbOpt = None,
) -> None:
    """Write a prompt's versions (weights included) to one JSON file to share."""
    from prompttune.registry.share import export

    chosen = export(_registry(db), ref, file)
    out.print(f"exported {len(chosen)} version(s) of {chosen[0].name} to {file}", highlight=False)


@registry_app.command("import")
def registry_import(
    file: Annotated[Path, typer.Argument(help="A file written by `prompttune registry export`.")],
    name: Annotated[str | None, typer.Option("--name", help="Import under this name instead.")] = None,
    db: DbOpt = None,
) -> None:
    """Add the versions and labels of an exported file (content, provenance and labels are checked against the
    file's hashes; duplicates are skipped). A hash is not a signature: trust provenance as far as the file's source.
    """
    from prompttune.registry.share import import_doc, read_export

    doc = read_export(file)
    for v, created in import_doc(_registry(db), doc, file, name):
        out.print(f"{'added' if created else 'already there as'} {v.ref} ({v.hash[:12]})", highlight=False)
    if not doc["provenance_checked"]:
        err.print(
            f"note: {file} is an older export (format 1): its content hashes were checked, but nothing covers its "
            "provenance (author, metrics, data hash) or labels; it is recorded with provenance_checked: false.",
            highlight=False,
            markup=False,
        )


@registry_app.command("rm")
def registry_rm(
    ref: Annotated[str, typer.Argument(help="name@v3 removes one version; name removes the prompt entirely.")],
    force: Annotated[
        bool, typer.Option("--force", help="Remove even when labels point at it (the labels are dropped).")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Remove a version, or a prompt with all its versions and labels; version numbers are never reused.

    A labelled version is removed only with --force, and the dropped labels are named.
    """
    removal = _registry(db).remove(ref, force=force)
    out.print(f"removed {', '.join(removal.versions)}", highlight=False)
    for label, at in removal.labels.items():
        out.print(f"dropped label {label} (it pointed at {at})", highlight=False)


# --- chains -------------------------------------------------------------------------------------------
@chain_app.command("run")
def chain_run(
    file: Annotated[Path, typer.Argument(help="The chain, a .yaml or .json file.")],
    var: VarOpt = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Tokens each step generates at most (default: the step's, else 128).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Backbone (default: smollm2).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run each step in order; a step's output fills the later steps' variables."""
    from prompttune.hard.chain import Chain, backbone_generator

    chain = Chain.load(file, db)
    values = parse_vars(var)
    chain.check(values)  # every variable of every step accounted for, before the model loads
    from prompttune.cli.options import Settings

    result = chain.run(values, backbone_generator(model, max_new_tokens, **Settings.backbone_args()))
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        return
    for step, text in result["steps"].items():
        err.print(f"[bold]{step}[/]: {escape(text)}", highlight=False)
    out.print(result["output"], markup=False, highlight=False)
