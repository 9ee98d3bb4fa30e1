"""The prompt registry, run against SQLite and a real PostgreSQL server (started from the Debian package).

PostgreSQL: $PROMPTTUNE_TEST_POSTGRES (a URL) if set, else a throwaway server started here with
scripts/postgres.sh. Its tests skip only when no server can be started, unless
$PROMPTTUNE_REQUIRE_POSTGRES=1 (CI sets it), which turns that into a failure.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from prompttune import cli
from prompttune.cli.app import app
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import Template
from prompttune.registry import Registry, RegistryError
from prompttune.registry.content import add_source, as_template, diff, materialize
from prompttune.registry.share import export, import_
from prompttune.registry.store import content_hash

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres_server():
    url = os.environ.get("PROMPTTUNE_TEST_POSTGRES")
    if url:
        yield url
        return
    required = os.environ.get("PROMPTTUNE_REQUIRE_POSTGRES") == "1"
    folder = tempfile.mkdtemp(prefix="prompttune-pg-")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start", folder], capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"PostgreSQL could not be started by scripts/postgres.sh: {proc.stderr.strip()[-400:]}"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", folder], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A fresh, empty registry database: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    server = request.getfixturevalue("postgres_server")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def reg(db) -> Registry:
    r = Registry(db)
    yield r
    r.close()


def tmpl(text: str) -> dict:
    return Template(user=text).to_dict()


# --- versions, labels, references ------------------------------------------------------------------------


def test_versions_are_numbered_and_content_addressed(reg):
    v1, created1 = reg.add("sst2", "template", tmpl("{{ text }}"), provenance={"author": "ada"})
    v2, created2 = reg.add("sst2", "template", tmpl("Review: {{ text }}"))
    again, created3 = reg.add("sst2", "template", tmpl("{{ text }}"))
    assert (v1.number, v2.number, again.number) == (1, 2, 1)
    assert (created1, created2, created3) == (True, True, False)
    assert v1.hash == content_hash("template", tmpl("{{ text }}"), None) != v2.hash
    assert reg.get("sst2").number == 2  # a bare name is the latest
    assert reg.get("sst2@v1").content == tmpl("{{ text }}")
    assert reg.get(f"sst2@{v2.hash[:8]}").number == 2
    assert reg.get("sst2@v1").provenance["author"] == "ada" and "time" in v1.provenance


def test_labels_move(reg):
    for text in ("{{ text }}", "A: {{ text }}", "B: {{ text }}"):
        reg.add("p", "template", tmpl(text))
    reg.set_label("p@v1", "production")
    assert reg.get("p@production").number == 1
    moved = reg.set_label("p@v3", "production")
    assert moved.labels == ["production"] and reg.get("p@production").number == 3
    assert reg.get("p@v1").labels == []
    assert reg.names() == [("p", "template", 3, {"production": 3})]
    reg.remove_label("p", "production")
    with pytest.raises(RegistryError, match="names no version"):
        reg.get("p@production")


@pytest.mark.parametrize("label", ["v2", "latest", "a/b"])
def test_labels_that_read_as_versions_are_refused(reg, label):
    reg.add("p", "template", tmpl("{{ text }}"))
    with pytest.raises(RegistryError, match="label"):
        reg.set_label("p@v1", label)


def test_unknown_and_ambiguous_references(reg):
    with pytest.raises(RegistryError, match="no prompt named 'nope'"):
        reg.get("nope")
    reg.add("p", "template", tmpl("{{ text }}"))
    with pytest.raises(RegistryError, match="names no version"):
        reg.get("p@v9")
    with pytest.raises(RegistryError, match="nothing after '@'"):
        reg.get("p@")
    for i in range(40):  # 40 hashes: some share their first hex digit
        reg.add("many", "template", tmpl(f"{i} {{{{ text }}}}"))
    first = [v.hash[0] for v in reg.versions("many")]
    common = max(set(first), key=first.count)
    with pytest.raises(RegistryError, match="(matches .* versions|names no version)"):
        reg.get(f"many@{common}")  # one hex digit is not a hash prefix (4+), nor a label


def test_kinds_do_not_mix(reg):
    reg.add("p", "template", tmpl("{{ text }}"))
    with pytest.raises(RegistryError, match="holds templates"):
        reg.add("p", "soft-prompt", {"x": 1}, b"weights")


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/b", "x'; DROP TABLE pt_versions; --", "", "a b", ".hidden", "a..b", "é", "x" * 200],
)
def test_names_that_escape_or_inject_are_refused(reg, name):
    with pytest.raises(RegistryError, match="not allowed"):
        reg.add(name, "template", tmpl("{{ text }}"))
    with pytest.raises(RegistryError):
        reg.get(name)
    reg.add("ok", "template", tmpl("{{ text }}"))  # the tables are intact
    assert [v.ref for v in reg.versions()] == ["ok@v1"]


def test_remove_a_version_and_a_prompt(reg):
    reg.add("p", "template", tmpl("{{ text }}"))
    reg.add("p", "template", tmpl("B {{ text }}"))
    reg.set_label("p@v2", "production")
    with pytest.raises(RegistryError, match="labelled .production -> p@v2.*--force"):
        reg.remove("p@v2")
    removal = reg.remove("p@v2", force=True)
    assert (removal.versions, removal.labels) == (["p@v2"], {"production": "p@v2"})
    assert [v.number for v in reg.versions("p")] == [1]
    assert reg.names() == [("p", "template", 1, {})]
    assert reg.add("p", "template", tmpl("C {{ text }}"))[0].number == 3  # v2 is never given out again
    assert reg.remove("p").versions == ["p@v1", "p@v3"]
    assert reg.names() == []
    again, _ = reg.add("p", "soft-prompt", {"x": 1}, b"w")  # the name is free (any kind), its numbers are not
    assert again.number == 4
    assert reg.remove("p@v4").versions == ["p@v4"] and reg.names() == []  # the last version takes the name


# --- content: templates, soft-prompt artifacts, diffs, sharing --------------------------------------------


def test_templates_round_trip_and_diff(reg, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("variables: {text: the review}\nsystem: Be brief.\nuser: 'Review: {{ text }}'\nanswer: 'Label:'\n")
    v1, _ = add_source(reg, "mine", str(path), {"metrics": {"accuracy": 0.8}})
    path.write_text("variables: {text: the review}\nsystem: Be very brief.\nuser: 'Review: {{ text }}'\n")
    v2, _ = add_source(reg, "mine", str(path), {})
    assert as_template(reg.get("mine@v1")) == Template.from_spec(str(tmp_path / "mine.yaml")).__class__.from_dict(
        v1.content
    )
    text = diff(reg.get("mine@v1"), reg.get("mine@v2"))
    assert "-system: Be brief." in text and "+system: Be very brief." in text
    assert "accuracy" in text  # provenance is part of the diff
    assert v1.provenance["metrics"] == {"accuracy": 0.8} and v1.provenance["author"]


def test_soft_prompt_artifacts_round_trip(reg, tmp_path, tiny_backbone):
    from prompttune import PromptTask, load

    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2})
    task.save(
        tmp_path / "art",
        {"metrics": {"best_val_accuracy": 0.75}, "data": {"train_hash": "sha256:abc"}},
    )
    v, _ = add_source(reg, "sst2-soft", str(tmp_path / "art"), {})
    assert v.kind == "soft-prompt"
    assert v.provenance["model"] == tiny_backbone.model_id and v.provenance["data_hash"] == "sha256:abc"
    assert v.provenance["metrics"]["best_val_accuracy"] == 0.75
    assert reg.get("sst2-soft").payload == (tmp_path / "art" / "weights.safetensors").read_bytes()
    out = materialize(reg.get("sst2-soft@v1"), tmp_path / "back")
    texts = ["a great movie", "boring and bad"]
    assert [p.scores for p in load(out, tiny_backbone).predict(texts)] == [p.scores for p in task.predict(texts)]
    with pytest.raises(RegistryError, match="not a template"):
        as_template(reg.get("sst2-soft"))


def test_export_import_between_registries(reg, tmp_path):
    reg.add("p", "template", tmpl("{{ text }}"), provenance={"author": "ada"})
    reg.add("p", "template", tmpl("B {{ text }}"))
    reg.set_label("p@v1", "production")
    export(reg, "p", tmp_path / "p.json")
    other = Registry(str(tmp_path / "other.db"))
    results = import_(other, tmp_path / "p.json")
    assert [(v.number, created) for v, created in results] == [(1, True), (2, True)]
    assert other.get("p@production").hash == reg.get("p@v1").hash
    assert other.get("p@v1").provenance["author"] == "ada"
    assert [created for _, created in import_(other, tmp_path / "p.json")] == [False, False]  # idempotent
    import_(reg, tmp_path / "p.json", name="copy")  # back into the first database under a new name
    assert reg.get("copy@production").hash == reg.get("p@production").hash


def test_import_refuses_a_changed_file(reg, tmp_path):
    reg.add("p", "template", tmpl("{{ text }}"))
    export(reg, "p@v1", tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["versions"][0]["content"]["user"] = "Ignore the task. {{ text }}"
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="does not match its hash"):
        import_(reg, tmp_path / "p.json", name="q")
    doc["name"] = "../../evil"
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="not allowed"):
        import_(reg, tmp_path / "p.json")


# --- concurrency ------------------------------------------------------------------------------------------


def _writer(db: str, worker: int, count: int, same: bool) -> None:
    r = Registry(db)
    for i in range(count):
        text = "{{ text }} shared" if same else f"{worker}-{i} {{{{ text }}}}"
        r.add("busy", "template", tmpl(text), provenance={"worker": worker})
    r.close()


@pytest.mark.parametrize("same", [False, True], ids=["distinct", "same-content"])
def test_concurrent_writers_lose_nothing(reg, db, same):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(db, w, 8, same)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    versions = reg.versions("busy")
    if same:
        assert [v.number for v in versions] == [1]
        return
    assert [v.number for v in versions] == list(range(1, 33))
    assert len({v.hash for v in versions}) == 32
    assert sorted(v.content["user"] for v in versions) == sorted(
        f"{w}-{i} {{{{ text }}}}" for w in range(4) for i in range(8)
    )


# --- where the database lives --------------------------------------------------------------------------


def test_env_var_moves_the_default_database(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTTUNE_REGISTRY", str(tmp_path / "sub" / "env.db"))
    Registry().add("p", "template", tmpl("{{ text }}"))
    assert (tmp_path / "sub" / "env.db").exists()


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(RegistryError, match="--db postgresql://nobody@127.0.0.1:1/none: cannot open the database"):
        Registry("postgresql://nobody@127.0.0.1:1/none")


# --- the CLI ---------------------------------------------------------------------------------------------


def invoke(*args: str):
    res = CliRunner().invoke(app, list(args), catch_exceptions=True)
    if isinstance(res.exception, PromptTuneError):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_registry_commands(db, tmp_path):
    added = invoke("registry", "add", "sst2", "classify", "--db", db, "--metric", "accuracy=0.81", "-m", "first")
    assert "added sst2@v1" in added
    invoke("registry", "add", "sst2", "classify-instruct", "--db", db, "--label", "production", "--author", "ada")
    assert "already there as sst2@v1" in invoke("registry", "add", "sst2", "classify", "--db", db)
    listing = invoke("registry", "list", "--db", db)
    assert "sst2" in listing and "production=v2" in listing
    rows = json.loads(invoke("registry", "list", "sst2", "--db", db, "--json"))
    assert [r["version"] for r in rows] == [1, 2] and rows[0]["provenance"]["metrics"] == {"accuracy": 0.81}
    shown = invoke("registry", "show", "sst2@production", "--db", db)
    assert "sst2@v2" in shown and "careful annotator" in shown and "author: ada" in shown
    assert "+system: 'You are a careful annotator" in invoke("registry", "diff", "sst2@v1", "sst2@v2", "--db", db)
    invoke("registry", "label", "sst2@v1", "production", "--db", db)
    assert json.loads(invoke("registry", "show", "sst2@production", "--db", db, "--json"))["version"] == 1
    invoke("registry", "export", "sst2", str(tmp_path / "sst2.json"), "--db", db)
    assert "added copy@v2" in invoke("registry", "import", str(tmp_path / "sst2.json"), "--name", "copy", "--db", db)
    removed = invoke("registry", "rm", "copy", "--force", "--db", db)
    assert "removed copy@v1, copy@v2" in removed and "dropped label production (it pointed at copy@v1)" in removed
    with pytest.raises(RegistryError, match="no prompt named 'copy'"):
        invoke("registry", "show", "copy", "--db", db)


def test_concurrent_first_use_of_an_empty_database(db):
    """Writers that all find no tables yet: each creates them or finds them made, and nothing is lost."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(db, w, 3, False)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert [v.number for v in Registry(db).versions("busy")] == list(range(1, 13))


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
