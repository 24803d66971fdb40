"""Prefect flows: each composes tasks and only orchestrates."""
