"""Data stages: read raw sources, extract text, filter, deduplicate, record provenance, pack into shards."""
