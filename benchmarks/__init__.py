"""Benchmarks for sdesolve_gen: peers side by side on exact analytic scores.

Run everything with ``python -m benchmarks [--quick] [--out DIR]``. Every comparison is measured in
the same process run, on the same exact score and the same initial noise, with wall times taken as
the median of repeats, so ratios are robust to a noisy shared machine.

Modules: :mod:`benchmarks.metrics` (sliced W2, log-density gap, timing), :mod:`benchmarks.problems`
(analytic targets), :mod:`benchmarks.peers` (k-diffusion loader + denoiser wrapper, score_sde-style
RK45 likelihood), one module per benchmark, :mod:`benchmarks.report` (markdown/JSON/goals).
"""
