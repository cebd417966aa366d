"""Run a test function on several gloo processes (CPU) and collect what each rank returns."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init: str, module: str, function: str, args: tuple, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = getattr(importlib.import_module(module), function)(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(tmp_path: Path, module: str, function: str, *args: Any, world: int = 2) -> list[Any]:
    """``module.function(rank, world, *args)`` on ``world`` gloo processes; their results by rank."""
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_entry, args=(world, init, module, function, args, str(tmp_path)), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
