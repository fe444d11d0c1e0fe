"""The exact Gaussian reference of METHOD.md §4: stationary Gaussian images with exact scores.

Data x ~ N(μ, Σ) with Σ stationary: per channel, Σ = U* diag(λ) U with U = F / sqrt(HW) the
unitary 2-D DFT, so λ (H, W, C) holds the variance of each Fourier coefficient. Every marginal of
VE/VP/sub-VP is then Gaussian, p_t = N(m_t μ, m_t² Σ + σ_t² I) with (m_t, σ_t) from
`sde.marginal_prob`, and its score is exact:
  s(x, t) = -F⁻¹[ F(x - m_t μ) / (m_t² λ + σ_t²) ].
Channels are independent. Natural images have λ_k roughly ∝ 1 / |k|² — ill-conditioned, which is
what PDS targets — and `power_law` builds such a spectrum.

Metrics, exact for this family:
  per-frequency log-variance error  sqrt(mean_k log²(v_k / λ_k)), v_k = sample variance of U x;
  Fréchet distance                  ‖m̂ - μ‖² + Σ_k (sqrt(v_k) - sqrt(λ_k))²,
the 2-Wasserstein distance between N(μ, Σ) and the samples' Gaussian fit restricted to stationary
covariances (diagonal in the same Fourier basis, so the matrix square root is elementwise).
"""
from __future__ import annotations

import functools
from typing import Iterable, Tuple, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib

Shape = Tuple[int, int, int]


def frequency_radius(shape: Shape) -> np.ndarray:
  """|k| of every DFT bin of an (H, W, C) image, in cycles per image (shape (H, W, C))."""
  h, w, c = shape
  ky = np.fft.fftfreq(h) * h
  kx = np.fft.fftfreq(w) * w
  r = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
  return np.repeat(r[:, :, None], c, axis=2)


def _unitary_fft2(x: jax.Array) -> jax.Array:
  """U x for images (..., H, W, C)."""
  h, w = x.shape[-3], x.shape[-2]
  return jnp.fft.fft2(x, axes=(-3, -2)) / np.sqrt(h * w)


class GaussianReference(flax.struct.PyTreeNode):
  """N(μ, Σ) on (H, W, C) images with μ (H, W, C) and stationary Σ of Fourier variances λ (H, W, C)."""
  mean: jax.Array
  spectrum: jax.Array

  @property
  def shape(self) -> Shape:
    return tuple(self.mean.shape)

  @classmethod
  def power_law(cls, shape: Shape, mean: float = 0.45, pixel_std: float = 0.25, exponent: float = 2.,
                k0: float = 1.) -> 'GaussianReference':
    """λ_k ∝ (|k|² + k0²)^(-exponent / 2), scaled so every pixel has standard deviation `pixel_std`.

    The constant mean is the stationary mean of the data; `exponent = 2` is the natural-image
    spectrum; k0 keeps the DC variance finite.
    """
    lam = (frequency_radius(shape) ** 2 + k0 ** 2) ** (-exponent / 2)
    lam *= pixel_std ** 2 / lam.mean(axis=(0, 1), keepdims=True)  # pixel variance = mean_k λ_k
    return cls(mean=jnp.full(shape, mean, jnp.float32), spectrum=jnp.asarray(lam, jnp.float32))

  @classmethod
  def from_images(cls, batches: Union[np.ndarray, Iterable[np.ndarray]], batch_size: int = 256
                  ) -> 'GaussianReference':
    """Fits the stationary model to images (N, H, W, C) or an iterable of batches, streaming.

    μ is the per-channel mean over images and pixels, λ_k = mean_i |U(x_i - μ)|²_k.
    """
    if isinstance(batches, (np.ndarray, jax.Array)):
      arr = np.asarray(batches)
      batches = [arr[i:i + batch_size] for i in range(0, len(arr), batch_size)]
    else:
      batches = list(batches)
    if not batches:
      raise ValueError('GaussianReference.from_images: no images were given.')
    stack = lambda b: np.asarray(b, np.float64)
    count = sum(len(b) for b in batches)
    mu = sum(stack(b).sum(axis=(0, 1, 2)) for b in batches) / (count * np.prod(batches[0].shape[1:3]))
    power = sum((np.abs(np.fft.fft2(stack(b) - mu, axes=(1, 2))) ** 2).sum(0) for b in batches)
    lam = power / count / np.prod(batches[0].shape[1:3])
    shape = batches[0].shape[1:]
    return cls(mean=jnp.asarray(np.broadcast_to(mu, shape), jnp.float32), spectrum=jnp.asarray(lam, jnp.float32))

  def _colour(self, xi: jax.Array, spectrum: jax.Array) -> jax.Array:
    """Re U*( sqrt(spectrum) ⊙ U ξ ): white noise (B, H, W, C) coloured to covariance U* diag U."""
    return jnp.real(jnp.fft.ifft2(jnp.sqrt(spectrum) * jnp.fft.fft2(xi, axes=(-3, -2)), axes=(-3, -2)))

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """n exact draws of the data distribution, shape (n, H, W, C)."""
    return self.mean + self._colour(jax.random.normal(rng, (n,) + self.shape), self.spectrum)

  def marginal(self, sde: sde_lib.SDE, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Mean (B, H, W, C) and Fourier variances (B, H, W, C) of p_t for times t of shape (B,)."""
    m = sde.marginal_prob(jnp.ones_like(t), t)[0]
    std = sde.marginal_prob(jnp.zeros_like(t), t)[1]
    m, std = m[:, None, None, None], std[:, None, None, None]
    return m * self.mean, m ** 2 * self.spectrum + std ** 2

  def sample_marginal(self, rng: jax.Array, sde: sde_lib.SDE, t: jax.Array) -> jax.Array:
    """Exact draws of p_t, one per entry of t (B,), shape (B, H, W, C)."""
    mean, lam_t = self.marginal(sde, t)
    return mean + self._colour(jax.random.normal(rng, mean.shape), lam_t)

  def score(self, x: jax.Array, t: jax.Array, sde: sde_lib.SDE) -> jax.Array:
    """The exact score ∇ log p_t(x) = -F⁻¹[F(x - m_t μ) / (m_t² λ + σ_t²)] for x (B, H, W, C)."""
    mean, lam_t = self.marginal(sde, t)
    return -jnp.real(jnp.fft.ifft2(jnp.fft.fft2(x - mean, axes=(-3, -2)) / lam_t, axes=(-3, -2)))

  def score_fn(self, sde: sde_lib.SDE):
    """`score_fn(x, t)` for the samplers, a `Partial` whose leaves are μ and λ."""
    return jax.tree_util.Partial(functools.partial(_reference_score, sde=sde), self)

  def pixel_variance(self) -> jax.Array:
    """Per-channel pixel variance mean_k λ_k, shape (C,)."""
    return self.spectrum.mean(axis=(0, 1))


def _reference_score(reference: GaussianReference, x, t, *, sde):
  return reference.score(x, t, sde)


def song_ermon_sigma_max(reference: GaussianReference, n: int = 2000, seed: int = 0) -> float:
  """σ_max by technique 1 of Song & Ermon (2020): the largest pairwise distance of n data draws."""
  x = np.asarray(reference.sample(jax.random.PRNGKey(seed), n), np.float64).reshape(n, -1)
  sq = (x ** 2).sum(1)
  d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
  return float(np.sqrt(max(d2.max(), 0.)))


# ----------------------------------------------------------------------------- metrics


def fourier_variances(samples: jax.Array, mean: jax.Array) -> jax.Array:
  """v_k = mean_i |U(x_i - m)|²_k for samples (N, H, W, C) around a mean (H, W, C)."""
  return jnp.mean(jnp.abs(_unitary_fft2(samples - mean)) ** 2, axis=0)


def log_variance_error(samples: jax.Array, reference: GaussianReference) -> float:
  """RMS over frequencies and channels of log(v_k / λ_k), v_k around the samples' own mean."""
  v = fourier_variances(samples, jnp.mean(samples, axis=0))
  return float(jnp.sqrt(jnp.mean(jnp.log(v / reference.spectrum) ** 2)))


def frechet_distance(samples: jax.Array, reference: GaussianReference) -> float:
  """Exact Fréchet (W2²) distance between N(μ, Σ) and the samples' stationary Gaussian fit."""
  m_hat = jnp.mean(samples, axis=0)
  v = fourier_variances(samples, m_hat)
  return float(jnp.sum((m_hat - reference.mean) ** 2) + jnp.sum((jnp.sqrt(v) - jnp.sqrt(reference.spectrum)) ** 2))


def metrics(samples: jax.Array, reference: GaussianReference) -> dict:
  """Both exact metrics of samples (N, H, W, C) against the reference, as floats."""
  samples = jnp.asarray(samples, jnp.float32)
  if samples.shape[1:] != reference.shape:
    raise ValueError(f'samples of shape {samples.shape[1:]} do not match the reference shape {reference.shape}.')
  return {'log_variance_error': log_variance_error(samples, reference),
          'frechet_distance': frechet_distance(samples, reference)}


def radial_profile(values: np.ndarray, shape: Shape, bins: int = 16) -> Tuple[np.ndarray, np.ndarray]:
  """Mean of an (H, W, C) per-frequency array over rings of |k|: (bin centres, means)."""
  r = frequency_radius(shape).ravel()
  edges = np.linspace(0, r.max() + 1e-9, bins + 1)
  idx = np.digitize(r, edges) - 1
  vals = np.asarray(values).ravel()
  means = np.array([vals[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)])
  return 0.5 * (edges[1:] + edges[:-1]), means
