"""The kernel benchmark runs end to end and writes its JSON (timings are not asserted)."""

import json

from benchmarks import kernels


def test_kernel_benchmark_writes_rows_for_every_op_and_impl(tmp_path):
    result = kernels.main(["--sizes", "tiny", "--quick", "--impls", "cachedit,torch", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert saved["rows"] == result["rows"]
    ops = {r["op"] for r in saved["rows"]}
    assert ops == {"l1_rel_diff", "l1_rel_diff(cur-base)", "taylor_update_(order=1)", "taylor_forecast(order=1)",
                   "taylor_update_(order=2)", "taylor_forecast(order=2)"}
    assert len(saved["rows"]) == 2 * len(ops)
    assert all(r["gbps"] > 0 and r["median_us"] > 0 for r in saved["rows"])


def test_pipeline_benchmark_runs_end_to_end():
    from benchmarks import pipeline

    result = pipeline.main(["--steps", "4", "--warmup", "1", "--inner-backend", "eager", "--repeats", "1",
                            "--threshold", "1.0"])
    assert result["cached_steps"] > 0 and min(result["plain_ms"], result["compiled_ms"], result["cachedit_ms"]) > 0
    assert 0 < result["rel_l2"] < 1
