"""Serving: a continuous-batching engine behind an OpenAI-compatible HTTP API, plus the chat page."""
