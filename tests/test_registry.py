"""The prompt registry, run against SQLite and a real PostgreSQL server (started from the Debian package).

PostgreSQL: $PROMPTTUNE_TEST_POSTGRES (a URL) if set, else a throwaway server started here with
scripts/postgres.sh. Its tests skip only when no server can be started, unless
$PROMPTTUNE_REQUIRE_POSTGRES=1 (CI sets it), which turns that into a failure.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prompttune.cli.app import app
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import Template
from prompttune.registry import Registry, RegistryError
from prompttune.registry.content import add_source, as_template, diff, materialize
from prompttune.registry.share import export, import_
from prompttune.registry.store import content_hash

ROOT = Path(__file__).resolve().parents[1]


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
