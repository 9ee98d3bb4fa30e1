"""Retrieval: reading and chunking documents, building, saving, reloading and querying a vector index."""

from __future__ import annotations

import json

import pytest

from prompttune.core.errors import ArtifactError, DataError
from prompttune.rag.index import VectorIndex, chunk_text, read_documents

CORPUS = {
    "paris.txt": "paris is the capital of france\n\nthe tower was built in the year",
    "rome.md": "rome is the capital of italy",
    "berlin.txt": "the river flows through the city of berlin in germany",
}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tiny import make_word_encoder

    from prompttune import Backbone

    return Backbone.load(str(make_word_encoder(tmp_path_factory.mktemp("enc") / "encoder")))


@pytest.fixture
def docs_dir(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in CORPUS.items():
        (folder / name).write_text(text)
    return folder


def test_chunks_pack_paragraphs_and_split_long_ones_with_overlap():
    assert chunk_text("a b c\n\nd e\n\nf g h i", max_words=5, overlap=1) == ["a b c\n\nd e", "f g h i"]
    words = " ".join(str(i) for i in range(10))
    assert chunk_text(words, max_words=4, overlap=1) == ["0 1 2 3", "3 4 5 6", "6 7 8 9"]
    with pytest.raises(DataError, match="--overlap"):
        chunk_text("x", max_words=4, overlap=4)


def test_reads_a_folder_and_jsonl_and_drops_duplicate_texts(docs_dir, tmp_path):
    docs = read_documents(docs_dir)
    assert sorted(d.id for d in docs) == ["berlin.txt", "paris.txt", "rome.md"]
    rows = [
        {"id": "q1", "context": "same text"},
        {"id": "q2", "context": "same text"},
        {"id": "q3", "context": "other"},
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = read_documents(path, text_field="context")
    assert [(d.id, d.source) for d in docs] == [("q1", "qa.jsonl:1"), ("q3", "qa.jsonl:3")]
    with pytest.raises(DataError, match=r"qa.jsonl:1: no 'text' field .*--text-field"):
        read_documents(path)


def test_bad_documents_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_documents(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt, .md or .jsonl files"):
        read_documents(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(DataError, match="nothing to index"):
        read_documents(tmp_path / "blank.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_documents(tmp_path / "bad.jsonl")


def test_index_save_reload_and_query_returns_the_right_chunk(docs_dir, tmp_path, tiny_encoder):
    index = VectorIndex.build(read_documents(docs_dir), tiny_encoder, max_words=8, overlap=2)
    assert len(index) == 5  # paris.txt: two paragraphs that do not fit in 8 words; berlin.txt: two windows
    path = index.save(tmp_path / "idx")
    assert sorted(p.name for p in path.iterdir()) == ["bm25", "chunks.jsonl", "index.faiss", "manifest.json"]
    loaded = VectorIndex.load(path, tiny_encoder)
    assert loaded.manifest["chunks"] == 5 and loaded.manifest["encoder"]["id"] == tiny_encoder.model_id
    for chunk in loaded.chunks:
        top = loaded.search(chunk.text, k=2, mode="dense")
        assert top[0].chunk == chunk and top[0].score == pytest.approx(1.0, abs=1e-4)
        assert loaded.search(chunk.text, k=1)[0].chunk == chunk  # hybrid: first in both rankings
        assert top[0].score >= top[1].score
    many = loaded.search(["rome is the capital of italy", "paris is the capital of france"], k=1)
    assert [h[0].chunk.doc_id for h in many] == ["rome.md", "paris.txt"]
    assert len(loaded.search("rain", k=50, collapse=False)) == 5  # k larger than the index: every chunk, once
    assert len(loaded.search("rain", k=50)) == 3  # by default, the best chunk of each document


def test_reload_uses_the_recorded_encoder_without_being_told(docs_dir, tmp_path, tiny_encoder):
    VectorIndex.build(read_documents(docs_dir), tiny_encoder).save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")  # the manifest records the encoder's folder
    assert loaded.search("rome is the capital of italy", k=1)[0].chunk.doc_id == "rome.md"


def test_missing_or_damaged_index_names_the_directory(tmp_path, docs_dir, tiny_encoder):
    with pytest.raises(ArtifactError, match=r"--index .*nowhere: no index directory.*prompttune rag index"):
        VectorIndex.load(tmp_path / "nowhere")
    path = VectorIndex.build(read_documents(docs_dir), tiny_encoder).save(tmp_path / "idx")
    (path / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="idx: damaged"):
        VectorIndex.load(path)
    (path / "chunks.jsonl").unlink()
    with pytest.raises(ArtifactError, match="chunks.jsonl is missing"):
        VectorIndex.load(path)


def test_an_index_refuses_another_encoder(docs_dir, tmp_path, tiny_encoder, tiny_model_dir):
    from tiny import make_word_encoder

    other = make_word_encoder(tmp_path / "other", seed=1)
    VectorIndex.build(read_documents(docs_dir), tiny_encoder).save(tmp_path / "idx")
    with pytest.raises(ArtifactError, match="built with encoder"):
        VectorIndex.load(tmp_path / "idx", str(other)).search("rome", k=1)


def test_keyword_ranking_and_fusion(docs_dir, tmp_path, tiny_encoder):
    from prompttune.rag.fusion import Fusion

    index = VectorIndex.build(read_documents(docs_dir), tiny_encoder)
    assert [h.chunk.doc_id for h in index.search("Where is Berlin?", k=1, mode="bm25")] == ["berlin.txt"]
    assert index.search("zzz unknown words", k=3, mode="bm25") == []  # no shared word: nothing
    assert len(index.search("zzz unknown words", k=3)) == 3  # hybrid still has the dense ranking
    dense, bm25 = [(1, 0.9), (2, 0.8), (3, 0.1)], [(3, 9.0), (1, 5.0)]
    fused = Fusion("rrf", 0.5, 60).fuse(dense, bm25)
    assert [row for row, _ in fused] == [1, 3, 2]  # 1: ranks 1 + 2; 3: ranks 3 + 1; 2: rank 2 alone
    assert fused[0][1] == pytest.approx(0.5 / 61 + 0.5 / 62)
    assert [row for row, _ in Fusion("rrf", 0.1, 60).fuse(dense, bm25)][:2] == [3, 1]  # BM25 weighs more
    assert [row for row, _ in Fusion("rrf", 1.0, 60).fuse(dense, bm25)] == [1, 2, 3]  # dense alone
    convex = Fusion("convex", 0.5).fuse(dense, bm25)  # min-max: dense 1, .875, 0; bm25 1, 0
    assert [(r, round(s, 4)) for r, s in convex] == [(1, 0.5), (3, 0.5), (2, 0.4375)]
    with pytest.raises(DataError, match="--dense-weight 1.5"):
        Fusion("rrf", 1.5)
    with pytest.raises(DataError, match="--mode fuzzy"):
        index.search("x", mode="fuzzy")


def test_rag_answer_carries_the_citations(monkeypatch, docs_dir, tiny_encoder, long_model_dir):
    from prompttune import Backbone
    from prompttune.core.generate import Generator
    from prompttune.rag.index import answer

    index = VectorIndex.build(read_documents(docs_dir), tiny_encoder)
    monkeypatch.setattr(Generator, "complete", lambda self, template, values, config: "Berlin is in Germany.")
    result = answer("Where is Berlin?", index, Backbone.load(str(long_model_dir)), k=2, mode="bm25").to_dict()
    berlin = next(s["rank"] for s in result["sources"] if s["id"].startswith("berlin"))
    assert result["citations"] == [berlin] and result["cited_by"] == "overlap"
    assert result["answer"] == f"Berlin is in Germany. [{berlin}]"


# --- the command line ------------------------------------------------------------------------------
def test_cli_index_then_ask_shows_the_answer_and_sources(docs_dir, tmp_path, tiny_encoder, long_model_dir):
    from typer.testing import CliRunner

    from prompttune import cli

    runner = CliRunner()
    index_dir = tmp_path / "idx"
    args = ["rag", "index", str(docs_dir), "--index", str(index_dir), "--encoder", tiny_encoder.model_id, "--json"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["documents"] == 3 and summary["chunks"] == 3 and (index_dir / "index.faiss").is_file()
    ask = ["rag", "ask", "Where is Berlin?", "--index", str(index_dir), "--model", str(long_model_dir)]
    result = runner.invoke(cli.app, [*ask, "-k", "2", "--max-new-tokens", "3", "--mode", "bm25", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert [s["id"] for s in answer["sources"]] == ["berlin.txt#0"] and isinstance(answer["answer"], str)
    result = runner.invoke(cli.app, [*ask, "-k", "2", "--max-new-tokens", "3"])
    assert (
        result.exit_code == 0 and "Sources (" in result.stdout and "\n  [1]" in result.stdout and "[2]" in result.stdout
    )
    assert set(answer) >= {"citations", "cited_by"}


def test_cli_errors_name_the_flag(tmp_path, monkeypatch, capsys):
    from prompttune import cli

    for argv in (
        ["rag", "ask", "q", "--index", str(tmp_path / "missing")],
        ["rag", "index", str(tmp_path / "nodocs.jsonl"), "--index", str(tmp_path / "i")],
    ):
        monkeypatch.setattr("sys.argv", ["prompttune", *argv])
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--index" in err and "missing: no index directory" in err and "nodocs.jsonl: no such file" in err


@pytest.mark.real_model
def test_default_encoder_retrieves_by_meaning(tmp_path):
    docs = [
        {"id": "bake", "text": "Preheat the oven, mix flour, sugar and eggs, and bake the cake for forty minutes."},
        {"id": "orbit", "text": "The Moon circles the Earth about once every twenty-seven days."},
        {"id": "tax", "text": "Income tax returns are due to the revenue office by the end of April."},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    index = VectorIndex.build(read_documents(path))
    hits = index.search(
        ["How long does our satellite take to go around the planet?", "making a dessert"], k=1, mode="dense"
    )
    assert [h[0].chunk.doc_id for h in hits] == ["orbit", "bake"]
