"""pds_jax: preconditioned diffusion sampling (PDS) for score-based generative models in JAX/Flax."""
__version__ = '0.1.0'
