"""Sample-quality metrics for images: SWD, FD/KID on weight-free features, FID/KID/IS on Inception.

  swd              multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et
                   al. 2018) and the pyramid itself.
  features         a fixed, weight-free multi-scale statistics feature map (no download).
  feature_metrics  Fréchet distance, unbiased polynomial-kernel MMD² (KID) and Inception Score on
                   feature sets.
  inception        the FID Inception-v3 (pytorch-fid's variant) in Flax and its weight loader.

`pds_jax.evaluation` combines them into `evaluate_samples`.
"""
