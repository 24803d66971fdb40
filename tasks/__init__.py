"""Units of work: plain typed functions, each wrapped as a Prefect task."""
