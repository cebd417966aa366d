"""An offline quality testbed: a small FLUX-architecture DiT trained with flow matching on
scikit-learn's handwritten digits, a classifier trained on the same data, and a benchmark of
what each cache setting costs in image quality (``python -m benchmarks.quality``)."""
