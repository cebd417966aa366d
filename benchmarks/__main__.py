"""``python -m benchmarks``: the compiled-model suite (``benchmarks/suite.py``)."""

from benchmarks.suite import main

main()
