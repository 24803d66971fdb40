"""ladder: replicate an LLM as one reproducible, orchestrated pipeline."""
