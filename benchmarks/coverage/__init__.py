"""The support matrix: every transformer class of ``diffusers.models.transformers`` with a
repeated block list, built tiny from its ``ClassSpec`` and compiled with ``backend="cachedit"``."""
