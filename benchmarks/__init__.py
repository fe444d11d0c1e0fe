"""Core benchmarks of pds_jax (scripts, never tests): run as `python -m benchmarks.<name>`."""
