"""Evaluation: perplexity / bits-per-byte now; tasks and report cards next (issue 7)."""
