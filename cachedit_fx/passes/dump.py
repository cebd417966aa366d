"""Write each pass's graph to a folder for researchers (``CACHEDIT_FX_DUMP=dir`` or the
``dump_dir`` option). Files: ``<graph>_<k>_<pass>.py`` (readable code of the program and of
every piece, headed by the pass's wall time), ``<graph>_analysis.json`` (the chain and the
cut values) and ``<graph>_timings.json`` (each pass's seconds, in order)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Optional

import torch.fx as fx

from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY

_GRAPH_IDS = itertools.count()


class GraphDumper:
    def __init__(self, dump_dir: Optional[str]) -> None:
        self.dump_dir = dump_dir
        self.graph_id = f"graph{next(_GRAPH_IDS)}"
        self.count = 0
        self.timings: list[tuple[str, float]] = []
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)

    def __call__(self, stage: str, gm: fx.GraphModule, seconds: Optional[float] = None) -> None:
        if not self.dump_dir:
            return
        took = "" if seconds is None else f" ({1e3 * seconds:.1f} ms)"
        parts = [f"# {stage}{took}: {type(gm).__name__}", gm.print_readable(print_output=False)]
        for name, module in gm.named_modules():
            inner = getattr(module, "piece", None)
            if name and isinstance(inner, fx.GraphModule):
                parts.append(f"# {name}.piece\n" + inner.print_readable(print_output=False))
        path = os.path.join(self.dump_dir, f"{self.graph_id}_{self.count}_{stage}.py")
        with open(path, "w") as f:
            f.write("\n\n".join(parts))
        self.count += 1
        if seconds is not None:
            self.timings.append((stage, seconds))
            self._write_json("timings", self.timings)
        analysis = {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                    for key in (CHAIN_META_KEY, PARTITION_META_KEY) if (value := gm.meta.get(key)) is not None}
        if analysis:
            self._write_json("analysis", analysis)

    def _write_json(self, kind: str, value: Any) -> None:
        with open(os.path.join(self.dump_dir, f"{self.graph_id}_{kind}.json"), "w") as f:
            json.dump(value, f, indent=1)
