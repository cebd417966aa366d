"""README's options table lists every option key the backend accepts, and nothing else; README
stays short, and every relative link in README and the guides under docs/ points at a file."""

from __future__ import annotations

import re
from pathlib import Path

from cachedit_fx.config import (
    BACKEND_KEYS, CACHE_KEYS, CALIBRATOR_KEYS, PARALLELISM_KEYS, PRUNE_KEYS, FoCaCalibratorConfig,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 600
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_options_table_lists_every_key():
    text = README.read_text()
    table = text[text.index("### Options"):]
    table = table[: table.index("\n\n", table.index("| key |"))]
    rows = set(re.findall(r"^\| `([a-zA-Z_]+)` \|", table, flags=re.M))
    keys = BACKEND_KEYS | CACHE_KEYS | CALIBRATOR_KEYS | PRUNE_KEYS | PARALLELISM_KEYS | set(FoCaCalibratorConfig.__dataclass_fields__)
    assert rows == keys, f"missing from README: {sorted(keys - rows)}; not options: {sorted(rows - keys)}"


def test_readme_is_short_and_relative_links_resolve():
    assert len(README.read_text().splitlines()) <= MAX_README_LINES
    documents = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)  # links in code blocks are code
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # absolute URL, or an anchor in the same document (anchors are not checked)
            path = target.split("#", 1)[0]
            if not (document.parent / path).exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert not broken, f"relative links to missing files: {broken}"
