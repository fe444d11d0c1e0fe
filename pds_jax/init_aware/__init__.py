"""Initialization-aware sampling (Fassina, Cardoso, Le Corff, Romary): stop the VE forward process
at σ_T, draw x_T from a learned or closed-form q_T ≈ p_T, and run a short sampler to σ_min.

Modules: `sigma_t` and `dip` (choosing σ_T), `inits` (q_T), `edm` (the samplers after the init),
`toys` (targets with exact noised densities), `metrics` (sliced Wasserstein, KL, tail quantiles).
"""
