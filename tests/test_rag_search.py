"""`prompttune rag search` and what `rag index` refuses (issue 18: retrieval, output paths, bad input).

Each test goes through the command line, where a user meets the behaviour.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prompttune import cli

DOCS = [
    {"id": "paris", "text": "paris is the capital of france"},
    {"id": "rome", "text": "rome is the capital of italy"},
    {"id": "berlin", "text": "the river flows through the city of berlin in germany"},
    # one long document: 8-word windows overlapping by 4 make four chunks, all about the museum
    {"id": "museum", "text": " ".join(["the art museum in the city was built in the year"] * 2)},
]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from tiny import make_word_encoder

    return str(make_word_encoder(tmp_path_factory.mktemp("enc") / "encoder"))


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, encoder_dir):
    folder = tmp_path_factory.mktemp("rag")
    docs = folder / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    index = folder / "idx"
    args = ["rag", "index", str(docs), "--index", str(index), "--encoder", encoder_dir, "--chunk-words", "8"]
    result = CliRunner().invoke(cli.app, [*args, "--overlap", "4"])
    assert result.exit_code == 0, result.output
    return index


def run_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run the console script as a user does (errors printed as `error: ...`, exit code 2)."""
    monkeypatch.setattr("sys.argv", ["prompttune", *argv])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_search_one_question_or_a_file_without_loading_the_decoder(index_dir, tmp_path, monkeypatch):
    def no_decoder(*args, **kwargs):
        raise AssertionError("rag search loaded a decoder")

    monkeypatch.setattr("prompttune.cli.rag_commands.load_backbone", no_decoder)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["rag", "search", "Where is Berlin?", "--index", str(index_dir), "--json"])
    assert result.exit_code == 0, result.output
    found = last_json(result.stdout)
    assert found["mode"] == "hybrid" and len(found["results"]) == 1
    assert found["results"][0]["hits"][0]["doc_id"] == "berlin" and len(found["results"][0]["hits"]) == 4

    (tmp_path / "q.txt").write_text("rome is the capital of italy\n\nparis is the capital of france\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "capital of italy", "id": 1}) + "\n")
    for name, expected in (("q.txt", ["rome", "paris"]), ("q.jsonl", ["rome"])):
        args = ["rag", "search", "--file", str(tmp_path / name), "--index", str(index_dir), "-k", "1"]
        result = runner.invoke(cli.app, [*args, "--mode", "bm25", "--json"])
        assert result.exit_code == 0, result.output
        assert [r["hits"][0]["doc_id"] for r in last_json(result.stdout)["results"]] == expected
    result = runner.invoke(cli.app, ["rag", "search", "capital of italy", "--index", str(index_dir), "-k", "2"])
    assert result.exit_code == 0 and "Q: capital of italy\n  [1]" in result.stdout and "(rome#0)" in result.stdout


def test_search_collapses_overlapping_windows_to_one_hit_per_document(index_dir):
    runner = CliRunner()
    args = ["rag", "search", "the art museum in the city", "--index", str(index_dir), "-k", "3", "--mode", "bm25"]
    every = last_json(runner.invoke(cli.app, [*args, "--no-collapse", "--json"]).stdout)["results"][0]["hits"]
    assert [h["doc_id"] for h in every] == ["museum"] * 3  # the long document's windows fill the top 3
    hits = last_json(runner.invoke(cli.app, [*args, "--json"]).stdout)["results"][0]["hits"]
    assert [h["doc_id"] for h in hits] == ["museum", "berlin"]  # the default: its best window, then the next
    for mode in ("hybrid", "dense"):  # document, the only other sharing a word; by meaning: every document once
        hits = last_json(runner.invoke(cli.app, [*args[:-2], "--mode", mode, "-k", "4", "--json"]).stdout)
        assert sorted(h["doc_id"] for h in hits["results"][0]["hits"]) == ["berlin", "museum", "paris", "rome"]


def test_search_bad_requests_are_errors_naming_the_flag(index_dir, tmp_path, monkeypatch, capsys):
    idx = ["--index", str(index_dir)]
    (tmp_path / "q.jsonl").write_text('{"query": "x"}\n')
    cases = {
        ("rag", "search", *idx): "give one question as an argument, or --file",
        ("rag", "search", "q", "--file", str(tmp_path / "q.jsonl"), *idx): "not both",
        ("rag", "search", "q", "-k", "0", *idx): "-k 0: ask for between 1 and 1000",
        ("rag", "search", "q", "-k", "5000", *idx): "-k 5000: ask for between 1 and 1000",
        ("rag", "search", "q", "--mode", "fuzzy", *idx): "--mode fuzzy: not a retrieval mode",
        ("rag", "search", "--file", str(tmp_path / "q.jsonl"), *idx): "q.jsonl:1: no 'question' text",
        ("rag", "search", "q", "--batch-size", "0", *idx): "--batch-size 0",
    }
    for argv, message in cases.items():
        code, _, err = run_main(monkeypatch, capsys, *argv)
        assert code == 2 and message in err, (argv, err)


def test_index_refuses_an_id_field_that_is_not_unique(tmp_path, encoder_dir, monkeypatch, capsys):
    rows = [{"title": "Rhine", "text": "the river flows"}, {"title": "Rhine", "text": "through the city"}]
    (tmp_path / "squad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["rag", "index", str(tmp_path / "squad.jsonl"), "--index", str(tmp_path / "idx"), "--id-field", "title"]
    code, _, err = run_main(monkeypatch, capsys, *argv, "--encoder", encoder_dir)
    assert code == 2 and "--id-field title: the value 'Rhine' names two different documents" in err
    assert "squad.jsonl:1 and squad.jsonl:2" in err and not (tmp_path / "idx").exists()


def test_index_never_deletes_a_folder_it_did_not_write_and_replaces_an_index_only_with_overwrite(
    tmp_path, encoder_dir, monkeypatch, capsys
):
    (tmp_path / "docs.txt").write_text("paris is the capital of france")
    keep = tmp_path / "v"
    keep.mkdir()
    (keep / "important.txt").write_text("keep")
    base = ["rag", "index", str(tmp_path / "docs.txt"), "--encoder", encoder_dir, "--index"]
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main(monkeypatch, capsys, *base, str(keep), *extra)
        assert code == 2 and "holds other files (important.txt) and is not a prompttune index" in err
        assert (keep / "important.txt").read_text() == "keep" and sorted(p.name for p in keep.iterdir()) == [
            "important.txt"
        ]
    (tmp_path / "afile").write_text("x")
    code, _, err = run_main(monkeypatch, capsys, *base, str(tmp_path / "afile"))
    assert code == 2 and "a file is there, not an index folder" in err

    index = tmp_path / "idx"
    assert run_main(monkeypatch, capsys, *base, str(index))[0] == 0
    code, _, err = run_main(monkeypatch, capsys, *base, str(index))
    assert code == 2 and "an index is already there; add --overwrite" in err
    (tmp_path / "docs.txt").write_text("rome is the capital of italy")
    assert run_main(monkeypatch, capsys, *base, str(index), "--overwrite")[0] == 0
    chunks = (index / "chunks.jsonl").read_text()
    assert "rome" in chunks and "paris" not in chunks  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_index_names_the_file_and_line_of_text_that_is_not_utf8(tmp_path, encoder_dir, monkeypatch, capsys):
    (tmp_path / "docs.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("fine")
    (tmp_path / "notes" / "b.txt").write_bytes(b"na\xefve")
    for docs, where in ((tmp_path / "docs.jsonl", "docs.jsonl:2: not UTF-8"), (tmp_path / "notes", "b.txt: not UTF-8")):
        argv = ["rag", "index", str(docs), "--index", str(tmp_path / "idx"), "--encoder", encoder_dir]
        code, _, err = run_main(monkeypatch, capsys, *argv)
        assert code == 2 and where in err and "iconv" in err, err
