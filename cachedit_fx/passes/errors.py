"""Errors raised by passes."""


class UnsupportedGraph(Exception):
    """The graph cannot be cached safely; the backend falls back to plain compilation
    (or re-raises with ``strict=True``)."""


class NoBlocks(UnsupportedGraph):
    """The graph holds no block of any block list (a prologue or epilogue between graph breaks):
    compiled plainly without a warning."""


class SideGraph(UnsupportedGraph):
    """The graph holds only block lists the model's chain does not need, its main block list
    running in another graph (a refiner between graph breaks): compiled plainly with a log
    line, no warning."""


class ParallelismError(ValueError):
    """A graph or configuration that the parallel passes cannot shard correctly (never a fallback)."""
