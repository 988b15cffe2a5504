"""Thin adapters that move bytes in and out of the core: local files, AWS, Spark."""
