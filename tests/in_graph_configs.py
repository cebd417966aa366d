"""Cache configs of the in-graph step tests: between them every control the step decides by
(warmup, max_continuous, max_cached, max_accumulated, a dynamic step mask, Bn > 0) and both
calibrators (FLUX: FoCa; Wan: TaylorSeer order 2)."""

from cachedit_fx import FoCaCalibratorConfig

CONFIGS = {
    "flux": dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.3, max_continuous_cached_steps=3,
                 calibrator_config=FoCaCalibratorConfig()),
    "wan": dict(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=1, residual_diff_threshold=0.3,
                max_cached_steps=4, max_accumulated_residual_diff_threshold=1.0,
                steps_computation_mask=[1, 1, 0, 0, 0, 1, 0, 0, 0, 1], steps_computation_policy="dynamic",
                taylorseer_order=2),
}
