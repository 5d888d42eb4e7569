"""homegrown: own the whole LLM stack — data, tokenizer, pretraining, tuning, evaluation and serving."""

__version__ = "0.1.0"
