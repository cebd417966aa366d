"""The kernel benchmark runs end to end and writes its JSON (timings are not asserted)."""

import json

import pytest

from benchmarks import kernels


def test_kernel_benchmark_writes_rows_for_every_op_and_impl(tmp_path):
    result = kernels.main(["--sizes", "tiny", "--quick", "--impls", "cachedit,torch", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert saved["rows"] == result["rows"]
    ops = {r["op"] for r in saved["rows"]}
    assert ops == {"l1_rel_diff", "l1_rel_diff(cur-base)", "taylor_push(order=1)", "taylor_forecast(order=1)",
                   "taylor_push(order=2)", "taylor_forecast(order=2)"}
    assert len(saved["rows"]) == 2 * len(ops)
    assert all(r["gbps"] > 0 and r["median_us"] > 0 for r in saved["rows"])


def test_pipeline_benchmark_runs_end_to_end():
    from benchmarks import pipeline

    result = pipeline.main(["--steps", "4", "--warmup", "1", "--inner-backend", "eager", "--repeats", "1",
                            "--threshold", "1.0"])
    assert result["cached_steps"] > 0 and min(result["plain_ms"], result["compiled_ms"], result["cachedit_ms"]) > 0
    assert 0 < result["rel_l2"] < 1


def test_suite_ci_run_writes_every_artifact_and_consistent_rows(tmp_path):
    """The compiled-model suite end to end (eager pieces: timings are not asserted)."""
    from benchmarks import suite

    results = suite.main(["--quick", "--ci", "--inner-backend", "eager", "--out", str(tmp_path)])
    for name in ("results.json", "results.md", "time.png", "speedup_vs_fidelity.png"):
        assert (tmp_path / name).stat().st_size > 0
    model = results["models"][0]
    rows = {r["system"]: r for r in model["rows"]}
    assert {"eager", "inductor", "cachedit/threshold0", "cachedit/SCM-fast", "diffusers-fbc"} <= set(rows)
    assert rows["cachedit/threshold0"]["num_cached_steps"] == 0 and rows["cachedit/threshold0"]["rel_l2"] == 0.0
    scm = rows["cachedit/SCM-fast"]
    assert scm["num_cached_steps"] > 0 and scm["ideal_speedup"] > 1 and scm["rel_l2"] > 0
    if "cache-dit/SCM-fast/compiled" in rows:  # same static mask: the same steps skipped
        assert rows["cache-dit/SCM-fast/compiled"]["cached_steps"] == scm["cached_steps"]
    assert all(r["recompiles_per_generation"] == 0 for r in rows.values() if r["family"] == "cachedit")
    assert model["threshold0_overhead"]["rounds"] >= 3
    assert json.loads((tmp_path / "results.json").read_text())["models"][0]["num_blocks"] == 8


def test_a_run_whose_cached_system_equals_inductor_is_rejected():
    import pytest
    import torch

    from benchmarks import suite

    latent = torch.ones(2)
    rows = [{"system": "inductor", "num_cached_steps": 0, "_latent": latent},
            {"system": "cachedit/F1B0", "num_cached_steps": 3, "_latent": latent.clone()}]
    with pytest.raises(RuntimeError, match="did not measure what it names"):
        suite._check_consistent(rows)
    rows[1]["_latent"] = latent + 1
    suite._check_consistent(rows)


def test_compile_time_benchmark_measures_every_system_cold_and_warm(tmp_path):
    from benchmarks import compile_time

    results = compile_time.main(["--inner-backend", "aot_eager", "--models", "flux", "--systems",
                                 "inductor,cachedit-regional-once", "--out", str(tmp_path)])
    (model,) = results["models"]
    assert model["num_blocks"] == 8 and set(model["systems"]) == {"inductor", "cachedit-regional-once"}
    for row in model["systems"].values():
        assert all(row[phase]["first_s"] > 0 and row[phase]["second_s"] > 0 for phase in ("cold", "warm"))
    assert "cachedit-regional-once" in (tmp_path / "results.md").read_text()


def test_communication_benchmark_counts_the_analytic_minimum_on_tiny_flux(tmp_path):
    from benchmarks import communication

    results = communication.main(["--models", "tiny flux", "--out", str(tmp_path)])
    rows = {row["kind"]: row for row in results["rows"]}
    assert set(rows) == {"tp", "cp"}
    for row in rows.values():
        assert row["total"] == pytest.approx(row["minimum"]), row
        assert row["gathers"] == 0
    assert set(rows["tp"]["bytes"]) == {"all_reduce"}
    assert set(rows["cp"]["bytes"]) == {"all_to_all_single", "all_gather_into_tensor"}
    assert rows["tp"]["weights_local"] < rows["tp"]["weights_full"]
    assert (tmp_path / "results.md").read_text().count("| tiny flux |") == 2


def test_memory_benchmark_counts_each_policy_against_its_bound(tmp_path):
    from benchmarks import memory

    results = memory.main(["--models", "flux", "--policies", "DBCache F1B0,FoCa", "--out", str(tmp_path)])
    rows = {row["policy"]: row for row in results["rows"]}
    assert rows["DBCache F1B0"]["bound"] == 2 and rows["FoCa"]["bound"] == 4
    for row in rows.values():
        (stream,) = row["streams"]
        assert stream["carried_bytes"] > 0 and stream["held_bytes"] == stream["ratio"] * stream["carried_bytes"]
    assert rows["FoCa"]["streams"][0]["held_bytes"] > rows["DBCache F1B0"]["streams"][0]["held_bytes"]
    assert "| flux-small | FoCa |" in (tmp_path / "results.md").read_text()


def test_systems_run_one_by_one_hold_one_model_copy_at_a_time():
    """The GPU path (systems not interleaved): every system's model is freed before the next
    system builds its own, so a full-size run needs memory for one copy, not one per system."""
    import dataclasses
    import gc
    import weakref

    import torch

    from benchmarks import suite
    from benchmarks.models import MODELS
    from benchmarks.systems import CacheSetting, baselines, cachedit_system

    bench = MODELS["quick"]["flux"]
    alive: list[weakref.ref] = []
    live_at_build: list[int] = []

    def counting_build(device, dtype):
        gc.collect()
        live_at_build.append(sum(1 for ref in alive if ref() is not None))
        model = bench.build(device, dtype)
        alive.append(weakref.ref(model))
        return model

    counted = dataclasses.replace(bench, builder=counting_build)
    systems = baselines("eager") + [cachedit_system(CacheSetting("F1B0", 1, 0, 0.3, 1), 4, "eager")]
    rows = suite.run_systems(systems, counted, torch.device("cpu"), torch.float32, steps=4, repeats=1,
                             interleave=False, warm_compile=False)
    assert len(rows) == 3 and live_at_build == [0, 0, 0]
    gc.collect()
    assert all(ref() is None for ref in alive)


def test_gpu_check_dry_run_runs_every_section_on_cpu(tmp_path):
    """The device script's code paths at tiny size on CPU, so the GPU run does not fail on a
    typo; its GPU figures are not asserted here."""
    from benchmarks import gpu_check

    results = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    sections = results["sections"]
    assert set(sections) == set(gpu_check.SECTIONS)
    assert all(entry["status"] == "ok" for entry in sections.values()), sections
    mid = sections["mid_flux"]
    assert mid["threshold0_max_rel_err"] <= 1e-5 and mid["cached_steps"] == mid["reference_cached_steps"]
    assert mid["max_rel_err_vs_reference"] <= 1e-5 and 0 < len(mid["cached_steps"]) < 3
    assert mid["in_graph_threshold0_max_rel_err"] <= 1e-5 and mid["in_graph_cached_steps"] == mid["cached_steps"]
    offload = sections["offload"]["sequential_cpu_offload"]
    assert offload["threshold0_max_rel_err"] <= 1e-5 and offload["cached_steps"] == [1, 2, 3]
    assert offload["fetched_bytes_caching"] < 0.5 * offload["fetched_bytes_uncached"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"].keys() == sections.keys()


@pytest.mark.parametrize("stack", ["layerwise casting (float8 storage)", "group offloading (block level)"])
def test_composability_matrix_rows_cache_and_equal_the_stacked_eager_model(stack):
    """The fast subset of ``benchmarks.composability``: eager pieces, no timing."""
    from benchmarks import composability

    row = composability.measure(stack, "eager")
    assert row["caches"] and row["equals_reference"] and row["recompiles"] == 0
    table = composability.markdown({"rows": [row], "inner_backend": "eager", "threads": 1, "date": "today"})
    assert f"| {stack} | yes | yes" in table
    if "offload" in stack:  # 4 of 5 steps skip 7 of 8 blocks: far fewer weight bytes move
        assert row["fetched_bytes"]["cached"] < 0.5 * row["fetched_bytes"]["uncached"]
