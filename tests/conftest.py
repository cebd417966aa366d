import os

import torch  # does not import triton

# Before anything imports triton: without a GPU, run the Triton kernels through Triton's CPU
# interpreter; with one, compile them for it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "inductor"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch: no cached frames, recompile counters or limits carry over."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()


@pytest.fixture
def triton_interpreter():
    """The Triton kernels run on CPU through Triton's interpreter (set above). On a machine with
    a GPU the interpreter is off and ``tests/kernels/test_kernels_cuda.py`` runs the kernels."""
    from cachedit_fx.kernels import TRITON_INSTALLED, runs_triton

    if torch.cuda.is_available():
        pytest.skip("Triton's CPU interpreter is off on a GPU machine; test_kernels_cuda.py covers the kernels")

    assert TRITON_INSTALLED, "triton is a test dependency: pip install -e '.[test]'"
    assert runs_triton(torch.empty(1)), "TRITON_INTERPRET=1 must be set before triton is imported"


@pytest.fixture
def compile_reports(monkeypatch):
    """The ``CompileReport`` (pieces, distinct compiles) of every program the backend lowers."""
    import cachedit_fx
    from cachedit_fx.passes import COMPILE_REPORT_META_KEY

    reports = []

    def record_compile_report(parent, settings):
        reports.append(parent.meta[COMPILE_REPORT_META_KEY])
        return parent

    registration = cachedit_fx.add_pass(record_compile_report, after="lower")
    yield reports
    registration.remove()
