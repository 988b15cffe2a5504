"""The embedded runtime: files in, a Parquet lake out, on one machine."""
