"""``python -m benchmarks.quality``: the quality benchmark (``benchmarks/quality/bench.py``)."""

from benchmarks.quality.bench import main

main()
