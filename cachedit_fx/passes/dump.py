"""Write each pass's graph to a folder for researchers (``CACHEDIT_FX_DUMP=dir`` or the
``dump_dir`` option). Files: ``<graph>_<k>_<pass>.py`` (readable code of the program and of
every piece) and ``<graph>_analysis.json`` (the chain and the cut values)."""

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
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)

    def __call__(self, stage: str, gm: fx.GraphModule) -> None:
        if not self.dump_dir:
            return
        parts = [f"# {stage}: {type(gm).__name__}", gm.print_readable(print_output=False)]
        for name, module in gm.named_modules():
            inner = getattr(module, "piece", None)
            if name and isinstance(inner, fx.GraphModule):
                parts.append(f"# {name}.piece\n" + inner.print_readable(print_output=False))
        path = os.path.join(self.dump_dir, f"{self.graph_id}_{self.count}_{stage}.py")
        with open(path, "w") as f:
            f.write("\n\n".join(parts))
        self.count += 1
        analysis = {key: _jsonable(gm.meta[key]) for key in (CHAIN_META_KEY, PARTITION_META_KEY) if key in gm.meta}
        if analysis:
            with open(os.path.join(self.dump_dir, f"{self.graph_id}_analysis.json"), "w") as f:
                json.dump(analysis, f, indent=1)


def _jsonable(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
