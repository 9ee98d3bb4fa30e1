"""`prompttune rag index | search | ask` and `prompttune agent`: retrieval and agents from the command line.

Registered in cli/app.py; the bodies are in rag_commands.py (heavy imports stay inside the commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, emit_json, err, out

rag_app = typer.Typer(
    no_args_is_help=True, help="Retrieval: index documents, then search them or answer questions from them."
)
IndexOpt = Annotated[Path, typer.Option("--index", help="The vector index directory.")]
KOpt = Annotated[int, typer.Option("-k", "--k", help="Passages to retrieve (1-1000).")]
ModeOpt = Annotated[
    str,
    typer.Option(help="Ranking: hybrid (0.45 dense + 0.55 BM25, min-max normalised; see README), dense, or bm25."),
]


@rag_app.command("index")
def rag_index(
    docs: Annotated[Path, typer.Argument(help="A .jsonl file (one document per line), a .txt/.md file, or a folder.")],
    index_dir: IndexOpt = Path("runs/index"),
    text_field: Annotated[str, typer.Option(help="The JSONL field holding the text.")] = "text",
    id_field: Annotated[str, typer.Option(help="The JSONL field holding a document id (default: file:line).")] = "id",
    chunk_words: Annotated[int, typer.Option(help="Words per chunk at most (paragraphs are packed whole).")] = 200,
    overlap: Annotated[int, typer.Option(help="Words shared by consecutive windows of a long paragraph.")] = 40,
    batch_size: Annotated[int, typer.Option(help="Chunks per encoder batch.")] = 64,
    encoder: Annotated[str, typer.Option(help="Sentence encoder: minilm (default) or a local HF encoder.")] = "minilm",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an index already at --index (atomic swap); other folders never."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Chunk documents, embed them with the default encoder and save a vector index.

    Document ids (--id-field) must be unique. --index must be new, empty, or an earlier index (with --overwrite).
    """
    from prompttune.cli.rag_commands import run_rag_index

    result = run_rag_index(
        docs, index_dir, text_field, id_field, chunk_words, overlap, batch_size, encoder, err, overwrite=overwrite
    )
    if as_json:
        emit_json(result)
    else:
        out.print(
            f"indexed {result['documents']} documents as {result['chunks']} chunks in {result['seconds']:.1f} s "
            f"-> {result['index']}",
            highlight=False,
        )


@rag_app.command("search")
def rag_search(
    question: Annotated[str | None, typer.Argument(help="The question (or give --file).")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Questions: a .txt file (one a line) or .jsonl (a question field per row)."),
    ] = None,
    question_field: Annotated[str, typer.Option(help="The JSONL field holding the question.")] = "question",
    index_dir: IndexOpt = Path("runs/index"),
    k: KOpt = 5,
    mode: ModeOpt = "hybrid",
    collapse: Annotated[
        bool, typer.Option(help="Keep the best window of each document (--no-collapse: every window).")
    ] = True,
    batch_size: Annotated[int, typer.Option(help="Questions per encoder batch (1-1024).")] = 64,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve the passages nearest each question, without generating (loads the encoder, not the decoder)."""
    from prompttune.cli.rag_commands import run_rag_search, show_rag_search
    from prompttune.core.errors import DataError
    from prompttune.rag.documents import read_questions

    if (question is None) == (file is None):
        raise DataError("rag search: give one question as an argument, or --file with questions (not both).")
    questions = read_questions(file, question_field) if file is not None else [question]
    result = run_rag_search(questions, index_dir, k, mode, collapse, batch_size, err)
    if as_json:
        emit_json(result)
    else:
        show_rag_search(out, result)


@rag_app.command("ask")
def rag_ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    index_dir: IndexOpt = Path("runs/index"),
    k: KOpt = 5,
    max_new_tokens: Annotated[int, typer.Option(help="Answer tokens at most.")] = 96,
    template: Annotated[str, typer.Option(help="Template with question and context variables.")] = "rag",
    mode: ModeOpt = "hybrid",
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve the passages nearest a question and answer from them with the decoder; show the sources."""
    from prompttune.cli.rag_commands import run_rag_ask, show_rag_answer

    result = run_rag_ask(question, index_dir, k, max_new_tokens, template, model, err, mode)
    if as_json:
        emit_json(result)
    else:
        show_rag_answer(out, result)


def agent(
    question: Annotated[str, typer.Argument(help="The question or task.")],
    tool: Annotated[
        list[str] | None, typer.Option("--tool", help="A tool to offer, repeatable: calculator, search.")
    ] = None,
    index_dir: Annotated[Path | None, typer.Option("--index", help="Vector index for --tool search.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Passages the search tool returns.")] = 3,
    max_steps: Annotated[int, typer.Option(help="Model calls at most (a malformed reply counts as one).")] = 6,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per model call at most.")] = 128,
    template: Annotated[str, typer.Option(help="Template with question, tools and scratchpad variables.")] = "react",
    examples: Annotated[
        bool, typer.Option(help="Show the model a worked example per tool that has one (the calculator).")
    ] = True,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer with a ReAct agent that calls tools; prints the Thought/Action/Observation trace.

    Exits 1 when no answer is reached (the step limit, or the model repeating a step word for word).
    """
    from prompttune.cli.rag_commands import run_agent

    result = run_agent(
        question, tool or [], index_dir, k, max_steps, max_new_tokens, template, model, err, examples=examples
    )
    if as_json:
        emit_json(result.to_dict())
    else:  # without an answer the trace ends with "Stopped: <why>", said once
        out.print(result.trace(), markup=False, highlight=False)
        if result.answer is not None:
            out.print(f"Answer: {result.answer}", markup=False, highlight=False)
    if result.answer is None:  # no answer reached: exit code 1 (2 is for bad input)
        raise typer.Exit(1)
