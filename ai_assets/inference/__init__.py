"""Batch LLM inference through any OpenAI-compatible API: bounded, rate-limited, retried, resumable."""
