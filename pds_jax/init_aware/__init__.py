"""Initialization-aware sampling (Fassina, Cardoso, Le Corff, Romary): stop the VE forward process
at σ_T, draw x_T from a learned or closed-form q_T ≈ p_T, and run a short sampler to σ_min.
This package holds the inits; every method of `pds_jax.sampling` starts from one (`sampling.init`).

Modules: `sigma_t` and `dip` (choosing σ_T), `inits` (q_T), `flows`, `tarflow` and `flow_training`
(the learned q_T), `store` (q_T and σ_T on disk, written by --mode fit_init),
`toys` (targets with exact noised densities), `toy_score` (a learned score for toys without one),
`metrics` (sliced Wasserstein, KL, tail quantiles).
"""
