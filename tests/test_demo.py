from cachedit_fx import demo


def test_demo_runs_and_reports_cached_steps_speedup_and_error(capsys):
    result = demo.main(["--steps", "8", "--warmup", "2", "--threshold", "100", "--inner-backend", "eager",
                        "--repeats", "1"])
    assert result["cached_steps"] == [2, 3, 4, 5, 6, 7]
    assert 0 < result["relative_error"] < 1
    out = capsys.readouterr().out
    assert "speedup" in out and "relative L2 error" in out
