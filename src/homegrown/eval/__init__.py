"""Evaluation: held-out bits-per-byte, the task suite, lm-eval-harness and external endpoints, the report card."""
