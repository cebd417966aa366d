"""An ordered list of named graph passes, each ``(gm, settings) -> gm``.

``PassManager.run`` applies them top to bottom, records each pass's wall time in ``timings``
(logged at DEBUG) and hands each result to a ``GraphDumper`` (files when ``dump_dir`` is set).
``pass_list.build_pass_list`` builds the list for one compile.

Invariant: a list never holds a pass twice under one name; ``insert`` names an existing pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch.fx as fx

log = logging.getLogger("cachedit_fx")

Pass = Callable[[fx.GraphModule, Any], fx.GraphModule]


def pass_name(graph_pass: Pass) -> str:
    return getattr(graph_pass, "__name__", type(graph_pass).__name__)


@dataclass
class PassManager:
    passes: list[Pass]
    timings: list[tuple[str, float]] = field(default_factory=list)
    """(pass name, seconds) of the latest ``run``, in order."""

    @property
    def names(self) -> list[str]:
        return [pass_name(p) for p in self.passes]

    def insert(self, graph_pass: Pass, *, after: Optional[str] = None, before: Optional[str] = None) -> None:
        """Insert ``graph_pass`` right after the pass named ``after`` or before ``before``."""
        if (after is None) == (before is None):
            raise ValueError("insert: name exactly one of after= / before=")
        anchor = after if after is not None else before
        if anchor not in self.names:
            raise ValueError(f"insert: no pass named {anchor!r}; the passes are {self.names}")
        if pass_name(graph_pass) in self.names:
            raise ValueError(f"insert: a pass named {pass_name(graph_pass)!r} is already in the list")
        self.passes.insert(self.names.index(anchor) + (after is not None), graph_pass)

    def up_to(self, name: str) -> "PassManager":
        """The passes up to and including ``name`` (an analysis prefix)."""
        return PassManager(self.passes[: self.names.index(name) + 1])

    def run(self, gm: fx.GraphModule, settings: Any, dump: Optional[Callable[..., None]] = None) -> fx.GraphModule:
        self.timings = []
        for graph_pass in self.passes:
            start = time.perf_counter()
            gm = graph_pass(gm, settings)
            seconds = time.perf_counter() - start
            self.timings.append((pass_name(graph_pass), seconds))
            log.debug("cachedit: pass %s %.1f ms", pass_name(graph_pass), 1e3 * seconds)
            if dump is not None:
                dump(pass_name(graph_pass), gm, seconds)
        return gm
