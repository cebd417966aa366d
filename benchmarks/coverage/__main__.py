"""``python -m benchmarks.coverage``: the support matrix (``benchmarks/coverage/matrix.py``)."""

from benchmarks.coverage.matrix import main

main()
