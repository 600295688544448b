"""jparam's benchmark suite (results in BENCHMARKS.md): ``python -m benchmarks.NAME``."""
