"""jparam's benchmark suite; see BENCHMARKS.md. Run a benchmark with ``python -m benchmarks.NAME``."""
