"""The registry through the CLI as a user met it (issue 18): version numbers, names, export digests, stored
label words, unusable or read-only databases, and databases made by the previous version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_registry import invoke, tmpl

from prompttune import cli
from prompttune.registry import Registry
from prompttune.registry.store import content_hash

# --- issue 18: what a user met, through the CLI -------------------------------------------------------------


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point, as a user runs it: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "1000")  # line breaks come from the message only
    monkeypatch.setattr(sys, "argv", ["prompttune", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    captured = capsys.readouterr()
    return e.value.code or 0, captured.out, captured.err


def user_error(monkeypatch, capsys, *args: str) -> str:
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "error: " in err and "Traceback" not in err, (code, err)
    return " ".join(err[err.index("error: ") :].split())  # from the message on (a progress line may come first)


def test_cli_version_numbers_are_never_reused_and_labels_are_not_dropped_silently(db, tmp_path, monkeypatch, capsys):
    """add p a; add p b --label production; rm p@production; add p c: c is p@v3, never a second p@v2."""
    for letter in "abcd":
        (tmp_path / f"{letter}.yaml").write_text(f"user: '{letter.upper()}: {{{{ text }}}}'\n")
    invoke("registry", "add", "p", str(tmp_path / "a.yaml"), "--db", db)
    assert "p@v2" in invoke("registry", "add", "p", str(tmp_path / "b.yaml"), "--label", "production", "--db", db)
    v2 = json.loads(invoke("registry", "show", "p@v2", "--db", db, "--json"))["hash"]
    refused = user_error(monkeypatch, capsys, "registry", "rm", "p@production", "--db", db)
    assert "p@production is labelled (production -> p@v2)" in refused and "--force" in refused
    assert json.loads(invoke("registry", "show", "p@production", "--db", db, "--json"))["hash"] == v2  # untouched
    removed = invoke("registry", "rm", "p@production", "--force", "--db", db)
    assert "removed p@v2" in removed and "dropped label production (it pointed at p@v2)" in removed
    assert "added p@v3" in invoke("registry", "add", "p", str(tmp_path / "c.yaml"), "--db", db)
    assert "names no version" in user_error(monkeypatch, capsys, "registry", "show", "p@v2", "--db", db)
    invoke("registry", "rm", "p", "--db", db)  # no labels left: no --force needed
    assert "added p@v4" in invoke("registry", "add", "p", str(tmp_path / "d.yaml"), "--db", db)


@pytest.mark.parametrize(
    "args",
    [
        ("registry", "add", "p\n", "classify"),
        ("registry", "add", "p", "classify", "--label", "production\n"),
        ("registry", "show", "p\n@v1"),
        ("registry", "show", "p@v1\n"),
        ("registry", "label", "p@v1", "prod\n"),
    ],
    ids=["name", "label-on-add", "ref-name", "ref-selector", "label"],
)
def test_cli_names_ending_in_a_newline_are_refused(args, tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "registry.db")
    invoke("registry", "add", "p", "classify", "--db", db)
    assert "is not allowed" in user_error(monkeypatch, capsys, *args, "--db", db)
    listing = json.loads(invoke("registry", "list", "--db", db, "--json"))
    assert [(r["name"], r["versions"], r["labels"]) for r in listing] == [("p", 1, {})]


def test_cli_import_refuses_edited_provenance_and_says_when_nothing_covers_it(db, tmp_path, monkeypatch, capsys):
    invoke("registry", "add", "p", "classify", "--metric", "accuracy=0.61", "--label", "production", "--db", db)
    invoke("registry", "add", "p", "classify-instruct", "--db", db)
    path = tmp_path / "p.json"
    invoke("registry", "export", "p", str(path), "--db", db)
    good = json.loads(path.read_text())
    assert good["format_version"] == 2 and len(good["digest"]) == 64
    edits = {
        "metrics": lambda d: d["versions"][0]["provenance"]["metrics"].update(accuracy=0.99),
        "author": lambda d: d["versions"][0]["provenance"].update(author="someone else"),
        "label": lambda d: (d["versions"][0].update(labels=[]), d["versions"][1].update(labels=["production"])),
        "number": lambda d: d["versions"][1].update(number=7),
    }
    for what, edit in edits.items():
        doc = json.loads(json.dumps(good))
        edit(doc)
        path.write_text(json.dumps(doc))
        message = user_error(monkeypatch, capsys, "registry", "import", str(path), "--name", "q", "--db", db)
        assert "was changed after export (its digest does not match" in message, what
    assert "no prompt named 'q'" in user_error(monkeypatch, capsys, "registry", "show", "q", "--db", db)
    # A file from the previous version (format 1, no digest) still imports, and says what was not checked.
    old = {k: v for k, v in good.items() if k != "digest"} | {"format_version": 1}
    path.write_text(json.dumps(old))
    code, out, err = run_main(monkeypatch, capsys, "registry", "import", str(path), "--name", "q", "--db", db)
    assert code == 0 and "added q@v1" in out
    assert "format 1" in err and "nothing covers its provenance" in err
    shown = json.loads(invoke("registry", "show", "q@production", "--db", db, "--json"))
    assert shown["provenance"]["provenance_checked"] is False and shown["provenance"]["metrics"] == {"accuracy": 0.61}
    path.write_text(json.dumps(good))  # the untouched file imports, its provenance marked as covered
    assert "added r@v1" in invoke("registry", "import", str(path), "--name", "r", "--db", db)
    shown = json.loads(invoke("registry", "show", "r@v1", "--db", db, "--json"))
    assert "provenance_checked" not in shown["provenance"] and shown["provenance"]["metrics"] == {"accuracy": 0.61}


def test_cli_template_keeps_its_label_words_and_eval_uses_them(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from conftest import NEG, POS, write_jsonl

    db = str(tmp_path / "registry.db")
    data = write_jsonl(
        tmp_path / "test.jsonl",
        [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG],
    )
    words = "positive=great|fine;negative=awful"
    invoke("registry", "add", "s", "classify", "--db", db)
    added = invoke("registry", "add", "s", "classify", "--verbalizer", words, "--label", "production", "--db", db)
    assert "added s@v2" in added  # other label words, other version
    shown = invoke("registry", "show", "s@production", "--db", db)
    assert "verbalizer:" in shown and "- great" in shown and "- awful" in shown
    stored = json.loads(invoke("registry", "show", "s@v2", "--db", db, "--json"))["content"]["verbalizer"]
    assert stored == {"positive": ["great", "fine"], "negative": ["awful"]}

    def report(*extra: str) -> dict:
        out = invoke("eval", *extra, str(data), "--model", str(tiny_model_dir), "--db", db, "--json")
        return json.loads(out.splitlines()[-1])

    def figures(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in ("prompt", "data", "examples_per_s", "eval_seconds")}

    from_registry = report("s@production")
    assert "its stored label words" in from_registry["prompt"]
    assert figures(from_registry) == figures(report("classify", "--verbalizer", words))
    assert figures(report("s@production", "--verbalizer", "positive=good")) == figures(
        report("classify", "--verbalizer", "positive=good")
    )  # --verbalizer still wins
    invoke("registry", "add", "s", "classify", "--verbalizer", "positive=great;neutral=meh", "--db", db)
    message = user_error(monkeypatch, capsys, "eval", "s@v3", str(data), "--model", str(tiny_model_dir), "--db", db)
    assert "neutral" in message and "stored with the registry template" in message
    assert "--verbalizer" in user_error(
        monkeypatch, capsys, "registry", "add", "s", "classify", "--verbalizer", "great", "--db", db
    )


@pytest.mark.parametrize(
    "location, needle",
    [
        ("mysql://u:secret@h/db", "cannot use a 'mysql' database"),
        ("foo://bar", "cannot use a 'foo' database"),
        ("/proc/nope/reg.db", "cannot create the folder /proc/nope"),
        ("FOLDER", "is a folder; give the database file's path"),
        ("NOTADB", "is not a registry database"),
    ],
    ids=["mysql", "unknown-scheme", "no-folder", "folder", "not-sqlite"],
)
def test_cli_unusable_database_locations_are_clear_errors(location, needle, tmp_path, monkeypatch, capsys):
    if location == "FOLDER":
        location = str(tmp_path)
    elif location == "NOTADB":
        location = str(tmp_path / "notes.txt")
        Path(location).write_text("not a database, just notes\n" * 100)
    message = user_error(monkeypatch, capsys, "registry", "list", "--db", location)
    assert message.startswith(f"error: --db {location.replace(':secret', ':***')}: ") and needle in message
    assert "secret" not in message
    monkeypatch.setenv("PROMPTTUNE_REGISTRY", location)
    message = user_error(monkeypatch, capsys, "registry", "list")
    assert "$PROMPTTUNE_REGISTRY=" in message and needle in message


@pytest.fixture
def read_only(tmp_path):
    """Make a file read-only for this process: chmod for a user, the immutable attribute for root."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o444)
        elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i: cannot make a file read-only")
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o644)


def test_cli_read_only_registry_reads_and_refuses_changes_clearly(tmp_path, read_only, monkeypatch, capsys):
    db = tmp_path / "registry.db"
    invoke("registry", "add", "p", "classify", "--db", str(db))
    Registry(str(db)).close()
    read_only(db)
    assert "p@v1" in invoke("registry", "show", "p", "--db", str(db))  # reading works
    for args in (("add", "p", "classify-instruct"), ("label", "p@v1", "production"), ("rm", "p")):
        message = user_error(monkeypatch, capsys, "registry", *args, "--db", str(db))
        assert message.startswith(f"error: --db {db}: the registry file is read-only") and "chmod u+w" in message
    assert json.loads(invoke("registry", "list", "p", "--db", str(db), "--json"))[0]["labels"] == []


# The previous version's schema, exactly: three tables (pt_numbering came later).
OLD = sa.MetaData()
sa.Table(
    "pt_prompts",
    OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
)
sa.Table(
    "pt_versions",
    OLD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("pt_prompts.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, index=True),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=True),
    sa.Column("provenance", sa.Text, nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
    sa.UniqueConstraint("prompt_id", "number"),
    sa.UniqueConstraint("prompt_id", "hash"),
)
sa.Table(
    "pt_labels",
    OLD,
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("pt_prompts.id"), primary_key=True),
    sa.Column("label", sa.String(128), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("pt_versions.id"), nullable=False),
)


def make_old_registry(db: str) -> None:
    """A registry as the previous version left it: p@v1, p@v3 (v2 was removed then) and production -> v3."""
    url = db.replace("postgresql://", "postgresql+psycopg://", 1) if "://" in db else f"sqlite:///{db}"
    engine = sa.create_engine(url)
    OLD.create_all(engine)
    t = OLD.tables
    with engine.begin() as conn:
        conn.execute(t["pt_prompts"].insert().values(id=1, name="p", kind="template", created="2025-01-01"))
        for vid, number, text in ((1, 1, "{{ text }}"), (3, 3, "C {{ text }}")):
            conn.execute(
                t["pt_versions"]
                .insert()
                .values(
                    id=vid,
                    prompt_id=1,
                    number=number,
                    hash=content_hash("template", tmpl(text), None),
                    content=json.dumps(tmpl(text), sort_keys=True),
                    payload=None,
                    provenance=json.dumps({"author": "ada", "time": "2025-01-01"}),
                    created="2025-01-01",
                )
            )
        conn.execute(t["pt_labels"].insert().values(prompt_id=1, label="production", version_id=3))
    engine.dispose()


def test_cli_a_registry_made_by_the_previous_version_keeps_working(db, monkeypatch, capsys):
    make_old_registry(db)
    listing = json.loads(invoke("registry", "list", "--db", db, "--json"))
    assert listing == [{"name": "p", "kind": "template", "versions": 2, "labels": {"production": 3}}]
    assert "pt_numbering" in sa.inspect(Registry(db).engine).get_table_names()  # created on open
    assert json.loads(invoke("registry", "show", "p@production", "--db", db, "--json"))["provenance"]["author"] == "ada"
    assert "added p@v4" in invoke("registry", "add", "p", "classify", "--db", db)
    assert "removed p@v4" in invoke("registry", "rm", "p@v4", "--db", db)
    assert "added p@v5" in invoke("registry", "add", "p", "classify", "--db", db)
    assert "--force" in user_error(monkeypatch, capsys, "registry", "rm", "p@v3", "--db", db)


def test_a_read_only_registry_from_the_previous_version_still_reads(tmp_path, read_only, monkeypatch, capsys):
    db = str(tmp_path / "old.db")
    make_old_registry(db)
    read_only(Path(db))
    assert "p@v3" in invoke("registry", "show", "p@production", "--db", db)
    message = user_error(monkeypatch, capsys, "registry", "add", "p", "classify", "--db", db)
    assert "the registry file is read-only" in message
