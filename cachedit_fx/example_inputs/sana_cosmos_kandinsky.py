"""Sana-family image and video DiTs (linear attention), Cosmos world models and Kandinsky 5/6
video DiTs."""

from __future__ import annotations

from cachedit_fx.example_inputs.common import ClassSpec

SPECS: dict[str, ClassSpec] = {}
