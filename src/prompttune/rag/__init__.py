"""Retrieval: documents chunked into a dense (faiss) + keyword (BM25) index, searched and answered from."""

from prompttune.rag.fusion import Fusion
from prompttune.rag.index import MODES, VectorIndex, answer, chunk_text, format_context, read_documents

__all__ = ["MODES", "Fusion", "VectorIndex", "answer", "chunk_text", "format_context", "read_documents"]
