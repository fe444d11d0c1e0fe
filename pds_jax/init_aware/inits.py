"""Initial distributions q_T ≈ p_T = p_data * N(0, σ_T² I) for samplers started at σ_T (docs/method.md §8).

Every init is a small pytree with the `InitDistribution` protocol:
  sample(rng, n) -> x (n, *event_shape)        n draws of q_T
  log_prob(x)    -> (n,)                       the exact log q_T(x) for x (n, *event_shape)
so it can be passed through `jax.jit`. The learned flows (pds_jax.init_aware.flows.FlowInit)
follow the same protocol.

  IsotropicGaussianInit  N(0, σ_T² I): the uninformed baseline of Fassina et al.
  MomentGaussianInit     N(μ, Σ + σ_T² I) with the data's mean and full covariance (vectors).
  SpectralGaussianInit   N(μ, Σ + σ_T² I) with Σ stationary, diagonal in the 2-D Fourier basis
                         per channel (pds_jax.gaussian.GaussianReference): the closed-form,
                         zero-training counterpart of the learned init for images.
  EmpiricalInit          data + σ_T ε: the "empirical oracle"; its log_prob is the Gaussian
                         KDE with bandwidth σ_T, the exact p_T of the empirical measure.
The two moment-matched Gaussians are not in the original work (docs/method.md §8).
"""
from __future__ import annotations

from typing import Protocol, Tuple, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from pds_jax.gaussian import GaussianReference, fourier_variances

# The fitted q_T kinds of --mode fit_init (config.sampling.init, beside the SDE's prior).
KINDS = ('flow', 'spectral_gaussian', 'gaussian', 'empirical')

_LOG_2PI = float(np.log(2 * np.pi))


@runtime_checkable
class InitDistribution(Protocol):
  """q_T: `sample(rng, n)` -> (n, *event_shape) and `log_prob(x)` -> (n,)."""

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    ...

  def log_prob(self, x: jax.Array) -> jax.Array:
    ...


def _check_event(x: jax.Array, event_shape: Tuple[int, ...], name: str) -> None:
  if tuple(x.shape[1:]) != tuple(event_shape) or x.ndim != len(event_shape) + 1:
    raise ValueError(f'{name}.log_prob: expected x of shape (n, {", ".join(map(str, event_shape))}), '
                     f'got {tuple(x.shape)}.')


def _check_sigma_t(sigma_t: float, name: str) -> None:
  if not sigma_t > 0:
    raise ValueError(f'{name}: sigma_T must be > 0, got {sigma_t}.')


class IsotropicGaussianInit(flax.struct.PyTreeNode):
  """N(0, σ_T² I) on `event_shape`."""
  sigma_t: float
  event_shape: Tuple[int, ...] = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, sigma_t: float, event_shape) -> 'IsotropicGaussianInit':
    _check_sigma_t(sigma_t, 'IsotropicGaussianInit')
    return cls(sigma_t=sigma_t, event_shape=tuple(int(d) for d in event_shape))

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    return self.sigma_t * jax.random.normal(rng, (n,) + self.event_shape)

  def log_prob(self, x: jax.Array) -> jax.Array:
    """-‖x‖² / (2σ_T²) - (D/2) log(2π σ_T²)."""
    _check_event(x, self.event_shape, 'IsotropicGaussianInit')
    d = int(np.prod(self.event_shape))
    sq = jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)
    return -0.5 * sq / self.sigma_t ** 2 - 0.5 * d * (_LOG_2PI + 2 * jnp.log(self.sigma_t))


class MomentGaussianInit(flax.struct.PyTreeNode):
  """N(μ, C) on vectors (D,) with C = Σ + σ_T² I; stores μ (D,) and the Cholesky factor L of C."""
  mean: jax.Array
  chol: jax.Array

  @classmethod
  def from_moments(cls, mean, cov, sigma_t: float) -> 'MomentGaussianInit':
    """From the data mean (D,) and covariance (D, D) (factorised in float64)."""
    _check_sigma_t(sigma_t, 'MomentGaussianInit')
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    if mean.ndim != 1 or cov.shape != (mean.size, mean.size):
      raise ValueError(f'MomentGaussianInit: expected mean (D,) and cov (D, D), got {mean.shape} and {cov.shape}.')
    chol = np.linalg.cholesky(cov + sigma_t ** 2 * np.eye(mean.size))
    return cls(mean=jnp.asarray(mean, jnp.float32), chol=jnp.asarray(chol, jnp.float32))

  @classmethod
  def from_samples(cls, x0, sigma_t: float) -> 'MomentGaussianInit':
    """From data draws x0 (N, D): sample mean and unbiased sample covariance."""
    x0 = np.asarray(x0, np.float64)
    if x0.ndim != 2 or x0.shape[0] < 2:
      raise ValueError(f'MomentGaussianInit.from_samples: expected x0 of shape (N >= 2, D), got {x0.shape}.')
    return cls.from_moments(x0.mean(0), np.atleast_2d(np.cov(x0, rowvar=False)), sigma_t)

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    return self.mean + jax.random.normal(rng, (n,) + self.mean.shape) @ self.chol.T

  def log_prob(self, x: jax.Array) -> jax.Array:
    """-½ ‖L⁻¹(x - μ)‖² - Σ log L_ii - (D/2) log 2π."""
    _check_event(x, self.mean.shape, 'MomentGaussianInit')
    y = jax.scipy.linalg.solve_triangular(self.chol, (x - self.mean).T, lower=True)
    d = self.mean.shape[0]
    return -0.5 * jnp.sum(y ** 2, axis=0) - jnp.sum(jnp.log(jnp.diag(self.chol))) - 0.5 * d * _LOG_2PI


class SpectralGaussianInit(flax.struct.PyTreeNode):
  """N(μ, Σ + σ_T² I) on images (H, W, C) with Σ stationary of Fourier variances λ (H, W, C).

  In the unitary 2-D DFT U (per channel) the covariance is diagonal with entries v = λ + σ_T², so
    log q(x) = -½ Σ_k |U(x - μ)|²_k / v_k - ½ Σ_k log(2π v_k)
  exactly (λ_k = λ_{-k}, as for any real stationary covariance). `noised` is that Gaussian as a
  `GaussianReference`, whose `sample` draws it.
  """
  noised: GaussianReference

  @classmethod
  def from_reference(cls, reference: GaussianReference, sigma_t: float) -> 'SpectralGaussianInit':
    """q_T = the exact p_T of Gaussian data N(μ, Σ) described by `reference`."""
    _check_sigma_t(sigma_t, 'SpectralGaussianInit')
    return cls(GaussianReference(mean=reference.mean, spectrum=reference.spectrum + sigma_t ** 2))

  @classmethod
  def from_images(cls, images, sigma_t: float, mean: str = 'channel') -> 'SpectralGaussianInit':
    """Fits μ and λ to images (N, H, W, C) with values in the model's data range.

    mean='channel': μ constant per channel and λ_k = mean_i |U(x_i - μ)|²_k
    (`GaussianReference.from_images`, the stationary model); mean='pixel': μ the mean image and
    λ_k = mean_i |U(x_i - μ)|²_k around it (`gaussian.fourier_variances`).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 2:
      raise ValueError(f'SpectralGaussianInit.from_images: expected images (N >= 2, H, W, C), got {images.shape}.')
    if mean == 'channel':
      reference = GaussianReference.from_images(images)
    elif mean == 'pixel':
      mu = jnp.asarray(images.mean(0, dtype=np.float64), jnp.float32)
      reference = GaussianReference(mean=mu, spectrum=fourier_variances(jnp.asarray(images, jnp.float32), mu))
    else:
      raise ValueError(f"SpectralGaussianInit.from_images: mean must be 'channel' or 'pixel', got {mean!r}.")
    return cls.from_reference(reference, sigma_t)

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    return self.noised.sample(rng, n)

  def log_prob(self, x: jax.Array) -> jax.Array:
    _check_event(x, self.noised.shape, 'SpectralGaussianInit')
    h, w = x.shape[1:3]
    coeffs = jnp.fft.fft2(x - self.noised.mean, axes=(1, 2)) / np.sqrt(h * w)
    v = self.noised.spectrum
    return (-0.5 * jnp.sum(jnp.abs(coeffs) ** 2 / v, axis=(1, 2, 3))
            - 0.5 * jnp.sum(jnp.log(v) + _LOG_2PI))


class EmpiricalInit(flax.struct.PyTreeNode):
  """The oracle x_i + σ_T ε, x_i uniform over `data` (N, *event_shape).

  log q(x) = logsumexp_i [-‖x - x_i‖² / (2σ_T²)] - log N - (D/2) log(2π σ_T²), computed one query
  point at a time (memory N·D). Fassina et al. use clean draws independent of the training set.
  """
  data: jax.Array
  sigma_t: float

  @classmethod
  def create(cls, data, sigma_t: float) -> 'EmpiricalInit':
    _check_sigma_t(sigma_t, 'EmpiricalInit')
    data = jnp.asarray(data, jnp.float32)
    if data.ndim < 2 or data.shape[0] < 1:
      raise ValueError(f'EmpiricalInit: expected data of shape (N, ...), got {data.shape}.')
    return cls(data=data, sigma_t=sigma_t)

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_idx, k_eps = jax.random.split(rng)
    idx = jax.random.randint(k_idx, (n,), 0, self.data.shape[0])
    return self.data[idx] + self.sigma_t * jax.random.normal(k_eps, (n,) + self.data.shape[1:])

  def log_prob(self, x: jax.Array) -> jax.Array:
    _check_event(x, self.data.shape[1:], 'EmpiricalInit')
    data = self.data.reshape(self.data.shape[0], -1)
    d = data.shape[1]

    def one(point):
      sq = jnp.sum((data - point) ** 2, axis=1)
      return logsumexp(-0.5 * sq / self.sigma_t ** 2)

    log_kernel = jax.lax.map(one, x.reshape(x.shape[0], -1))
    return log_kernel - jnp.log(data.shape[0]) - 0.5 * d * (_LOG_2PI + 2 * jnp.log(self.sigma_t))
