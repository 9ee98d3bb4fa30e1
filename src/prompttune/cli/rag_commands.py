"""What `prompttune rag index|ask|search` and `prompttune agent` do, apart from flag parsing."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from prompttune.cli.options import load_backbone
from prompttune.cli.progress import progress_bar
from prompttune.core.backbone import set_threads


def run_rag_index(
    docs: Path,
    index_dir: Path,
    text_field: str = "text",
    id_field: str = "id",
    chunk_words: int = 200,
    overlap: int = 40,
    batch_size: int = 64,
    encoder: str = "minilm",
    console: Console | None = None,
    overwrite: bool = False,
) -> dict:
    """Chunk and embed documents into a vector index directory; returns a summary."""
    from prompttune.core.embeddings import load_encoder
    from prompttune.rag.index import VectorIndex, check_index_path, read_documents

    console = console or Console(stderr=True)
    set_threads()
    check_index_path(index_dir, overwrite)  # before the slow work, and again when saving
    documents = read_documents(docs, text_field=text_field, id_field=id_field)
    with console.status(f"loading encoder {encoder}"):
        backbone = load_encoder(encoder)
    t0 = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task("embedding chunks", total=None, info="")
        index = VectorIndex.build(
            documents,
            backbone,
            max_words=chunk_words,
            overlap=overlap,
            batch_size=batch_size,
            progress=lambda n: bar.advance(task, n),
            on_chunks=lambda n: bar.update(task, total=n),
        )
    seconds = time.perf_counter() - t0
    index.save(index_dir, overwrite=overwrite)
    return {
        "index": str(index_dir),
        "documents": len(documents),
        "chunks": len(index),
        "encoder": backbone.model_id,
        "seconds": round(seconds, 2),
    }


def run_rag_ask(
    question: str,
    index_dir: Path,
    k: int = 5,
    max_new_tokens: int = 96,
    template: str = "rag",
    model: str | None = None,
    console: Console | None = None,
    mode: str = "hybrid",
) -> dict:
    """Retrieve the k nearest chunks and answer from them with the decoder; returns answer + sources."""
    from prompttune.rag.index import VectorIndex, answer, check_search

    console = console or Console(stderr=True)
    set_threads()
    index = VectorIndex.load(index_dir)
    check_search([question], k, mode)  # before the decoder loads
    decoder = load_backbone(model, console)
    with console.status("retrieving and answering"):
        return answer(question, index, decoder, k, template, max_new_tokens, mode).to_dict()


def run_rag_search(
    questions: list[str],
    index_dir: Path,
    k: int = 5,
    mode: str = "hybrid",
    collapse: bool = True,
    batch_size: int = 64,
    console: Console | None = None,
) -> dict:
    """Retrieve the k best passages per question (questions embedded in batches); loads the index and
    its encoder only, never a decoder."""
    from prompttune.core.errors import DataError
    from prompttune.rag.index import VectorIndex, check_search

    console = console or Console(stderr=True)
    if not 1 <= batch_size <= 1024:
        raise DataError(f"--batch-size {batch_size}: give between 1 and 1024 questions per encoder batch.")
    check_search(questions, k, mode)
    set_threads()
    index = VectorIndex.load(index_dir)
    with console.status(f"searching {len(questions)} question(s)"):
        hits = index.search(questions, k=k, mode=mode, batch_size=batch_size, collapse=collapse)
    results = [
        {"question": q, "hits": [_hit_dict(rank, h) for rank, h in enumerate(hs, 1)]}
        for q, hs in zip(questions, hits, strict=True)
    ]
    return {"index": str(index_dir), "mode": mode, "k": k, "collapse": collapse, "results": results}


def _hit_dict(rank: int, hit) -> dict:
    c = hit.chunk
    return {
        "rank": rank,
        "score": round(hit.score, 4),
        "id": c.id,
        "doc_id": c.doc_id,
        "source": c.source,
        "text": c.text,
    }


def show_rag_search(console: Console, result: dict, width: int = 160) -> None:
    for r in result["results"]:
        console.print(f"Q: {r['question']}", markup=False, highlight=False)
        if not r["hits"]:
            console.print("  (no passage shares a word with it)", markup=False)
        show_sources(console, r["hits"], width)


def show_sources(console: Console, sources: list[dict], width: int = 160) -> None:
    for s in sources:
        text = " ".join(s["text"].split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        console.print(f"  [{s['rank']}] {s['score']:.3f} {s['source']} ({s['id']}): {text}", markup=False)


def show_rag_answer(console: Console, result: dict, width: int = 160) -> None:
    console.print(f"Answer: {result['answer']}", markup=False, highlight=False)
    how = {"model": "cited by the model", "overlap": "attributed by the answer's words"}.get(result.get("cited_by"))
    cited = ", ".join(f"[{i}]" for i in result.get("citations", []))
    console.print(f"Sources ({how}: {cited}):" if how else "Sources (none cited):", markup=False, highlight=False)
    show_sources(console, result["sources"], width)


def run_agent(
    question: str,
    tools: list[str],
    index_dir: Path | None = None,
    k: int = 3,
    max_steps: int = 6,
    max_new_tokens: int = 128,
    template: str = "react",
    model: str | None = None,
    console: Console | None = None,
    on_step=None,
    examples: bool = True,
):
    """Run the ReAct agent with the named tools; returns the AgentResult."""
    from prompttune.core.errors import DataError
    from prompttune.hard.agent import Agent, TemplateModel
    from prompttune.hard.tools import ToolContext, build_tools

    console = console or Console(stderr=True)
    set_threads()
    if not tools:
        raise DataError("agent: no tools; add at least one --tool (calculator, search).")
    built = build_tools(tools, ToolContext(index=index_dir, k=k))  # bad tools fail before the model loads
    decoder = load_backbone(model, console)
    agent = Agent(TemplateModel(decoder, template, max_new_tokens), tools=built, max_steps=max_steps, examples=examples)
    return agent.run(question, progress=on_step)
