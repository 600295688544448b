"""``python -m benchmarks``: every suite, see `benchmarks.run`."""

from benchmarks.run import main

main()
