"""RAG ingestion: sources -> chunks -> embeddings -> Qdrant, kept exactly in sync."""
