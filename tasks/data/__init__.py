"""The data stage: ingest, normalize, quality gate, filter, dedup, split and version a corpus."""
