"""README's options table lists every option key the backend accepts, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from cachedit_fx.config import (
    BACKEND_KEYS, CACHE_KEYS, CALIBRATOR_KEYS, PARALLELISM_KEYS, PRUNE_KEYS, FoCaCalibratorConfig,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_options_table_lists_every_key():
    text = README.read_text()
    table = text[text.index("### Options"):]
    table = table[: table.index("\n\n", table.index("| key |"))]
    rows = set(re.findall(r"^\| `([a-zA-Z_]+)` \|", table, flags=re.M))
    keys = BACKEND_KEYS | CACHE_KEYS | CALIBRATOR_KEYS | PRUNE_KEYS | PARALLELISM_KEYS | set(FoCaCalibratorConfig.__dataclass_fields__)
    assert rows == keys, f"missing from README: {sorted(keys - rows)}; not options: {sorted(rows - keys)}"
