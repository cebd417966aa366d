"""Benchmarks of cachedit_fx (run as modules: ``python -m benchmarks.<name>``)."""
