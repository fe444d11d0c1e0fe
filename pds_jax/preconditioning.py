"""The PDS preconditioner M (Ma et al., "Preconditioned Score-based Generative Models", IJCV 2025).

M is built from two data statistics (docs/method.md §2), both stored as HWC arrays here:
  frequency statistic  f = log(1 + mean_i |F x_i|²)   (F: 2-D DFT over H, W per channel)
  space statistic      s = mean_i x_i²
normalised with α ≥ 1 into masks  M_mask = α / (m̂ + α - 1),  m̂ = m / max(m), and applied as
  M ξ    = Re F⁻¹( M_f ⊙ F( M_s ⊙ ξ ) )
  M Mᵀ g = Re F⁻¹( M_f ⊙ F( M_s² ⊙ F⁻¹( M_f ⊙ F g ) ) )
exactly as the official code does (its inner F⁻¹ stays complex). A missing mask is the identity;
with no mask at all no FFT is computed, so the identity preconditioner is bit-for-bit a no-op.

The official `.npy` files are (C, H, W) (NCHW code); `load` transposes them to HWC and
`save_statistics` writes them back in that layout.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Tuple, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax.io_utils import atomic_write

Shape = Tuple[int, int, int]


class MaskError(ValueError):
  """An invalid PDS mask or statistic; the message names the file or argument at fault."""


def _fft2(x: jax.Array) -> jax.Array:
  return jnp.fft.fft2(x, axes=(-3, -2))


def _ifft2(x: jax.Array) -> jax.Array:
  return jnp.fft.ifft2(x, axes=(-3, -2))


class Preconditioner(flax.struct.PyTreeNode):
  """A PDS preconditioner: optional frequency and space masks of shape (H, W, C).

  It is a pytree (the masks are leaves, `None` means identity), so it can be passed to jitted,
  pmapped or sharded functions and changed without recompiling.
  """
  freq_mask: Optional[jax.Array] = None
  space_mask: Optional[jax.Array] = None

  @property
  def is_identity(self) -> bool:
    """True when neither mask is set (a static property of the pytree structure)."""
    return self.freq_mask is None and self.space_mask is None

  def apply(self, xi: jax.Array) -> jax.Array:
    """M ξ for a batch ξ of shape (B, H, W, C) (or (H, W, C))."""
    y = xi if self.space_mask is None else self.space_mask * xi
    if self.freq_mask is not None:
      y = jnp.real(_ifft2(self.freq_mask * _fft2(y))).astype(xi.dtype)
    return y

  def apply_mmt(self, g: jax.Array) -> jax.Array:
    """M Mᵀ g for a batch g of shape (B, H, W, C) (or (H, W, C))."""
    if self.freq_mask is None:
      return g if self.space_mask is None else self.space_mask ** 2 * g
    if self.space_mask is None:
      return jnp.real(_ifft2(self.freq_mask ** 2 * _fft2(g))).astype(g.dtype)
    inner = _ifft2(self.freq_mask * _fft2(g))
    return jnp.real(_ifft2(self.freq_mask * _fft2(self.space_mask ** 2 * inner))).astype(g.dtype)

  def condition_number(self) -> float:
    """max / min of the combined mask factors: how far M is from a multiple of the identity."""
    ratio = 1.
    for m in (self.freq_mask, self.space_mask):
      if m is not None:
        ratio *= float(jnp.max(m) / jnp.min(m))
    return ratio


# ----------------------------------------------------------------------------- statistics


def compute_statistics(batches: Union[np.ndarray, Iterable[np.ndarray]],
                       batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
  """The official PDS statistics of images with values in [0, 1], streamed over batches.

  Args:
    batches: an array (N, H, W, C) or an iterable of arrays (B, H, W, C). Memory use is one batch
      plus two (H, W, C) float64 accumulators, whatever the number of images.
    batch_size: the chunk size used when `batches` is a single array.

  Returns:
    (freq_stat, space_stat), each (H, W, C) float32:
    freq_stat = log(1 + mean_i |F x_i|²), space_stat = mean_i x_i².
  """
  if isinstance(batches, np.ndarray) or isinstance(batches, jax.Array):
    arr = np.asarray(batches)
    batches = (arr[i:i + batch_size] for i in range(0, len(arr), batch_size))
  power_sum = sq_sum = None
  count = 0
  for i, batch in enumerate(batches):
    batch = np.asarray(batch, dtype=np.float64)
    if batch.ndim != 4:
      raise MaskError(f'compute_statistics: batch {i} has shape {batch.shape}; expected (B, H, W, C).')
    if power_sum is None:
      power_sum = np.zeros(batch.shape[1:])
      sq_sum = np.zeros(batch.shape[1:])
    elif batch.shape[1:] != power_sum.shape:
      raise MaskError(f'compute_statistics: batch {i} has image shape {batch.shape[1:]}, '
                      f'earlier batches had {power_sum.shape}.')
    power_sum += (np.abs(np.fft.fft2(batch, axes=(1, 2))) ** 2).sum(0)
    sq_sum += (batch ** 2).sum(0)
    count += len(batch)
  if count == 0:
    raise MaskError('compute_statistics: no images were given.')
  freq_stat = np.log1p(power_sum / count)
  return freq_stat.astype(np.float32), (sq_sum / count).astype(np.float32)


def _validate_statistic(stat: np.ndarray, name: str, shape: Optional[Shape]) -> np.ndarray:
  stat = np.asarray(stat, dtype=np.float32)
  if stat.ndim != 3:
    raise MaskError(f'{name}: expected an (H, W, C) array, got shape {stat.shape}.')
  if shape is not None and tuple(stat.shape) != tuple(shape):
    raise MaskError(f'{name}: shape (H, W, C) = {tuple(stat.shape)} does not match the model image shape '
                    f'{tuple(shape)}; compute the masks on data of the model\'s size.')
  if not np.all(np.isfinite(stat)):
    raise MaskError(f'{name}: contains {int(np.sum(~np.isfinite(stat)))} NaN/Inf values.')
  if np.any(stat < 0):
    raise MaskError(f'{name}: contains negative values (min {float(stat.min()):.4g}); PDS statistics are '
                    'mean powers and must be >= 0.')
  if not stat.max() > 0:
    raise MaskError(f'{name}: is zero everywhere; it cannot be normalised by its maximum.')
  return stat


def normalize_mask(stat: np.ndarray, alpha: float, name: str = 'mask',
                   shape: Optional[Shape] = None) -> np.ndarray:
  """M_mask = α / (m̂ + α - 1) with m̂ = stat / max(stat), validated (docs/method.md §2)."""
  stat = _validate_statistic(stat, name, shape)
  if not np.isfinite(alpha) or alpha < 1:
    raise MaskError(f'{name}: alpha must be a finite number >= 1 (alpha -> inf is the vanilla sampler, '
                    f'alpha = 1 full strength), got {alpha}.')
  m_hat = stat / stat.max()
  denom = (m_hat + alpha - 1) / alpha
  if np.any(denom <= 0):
    raise MaskError(f'{name}: m_hat + alpha - 1 <= 0 at {int(np.sum(denom <= 0))} entries with alpha={alpha} '
                    '(a zero statistic needs alpha > 1).')
  return (1. / denom).astype(np.float32)


def from_statistics(freq_stat: Optional[np.ndarray] = None, space_stat: Optional[np.ndarray] = None,
                    alpha: float = 5., shape: Optional[Shape] = None,
                    names: Tuple[str, str] = ('freq_stat', 'space_stat')) -> Preconditioner:
  """A `Preconditioner` from (H, W, C) statistics, normalised with the same α for both masks."""
  masks = [None if stat is None else jnp.asarray(normalize_mask(stat, alpha, name, shape))
           for stat, name in zip((freq_stat, space_stat), names)]
  return Preconditioner(freq_mask=masks[0], space_mask=masks[1])


# ----------------------------------------------------------------------------- files


def read_statistic(path: str, shape: Optional[Shape] = None) -> np.ndarray:
  """Reads an official PDS `.npy` statistic, (C, H, W) or (1, C, H, W), and returns it as (H, W, C)."""
  if not os.path.isfile(path):
    raise MaskError(f'{path}: mask file not found.')
  try:
    arr = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise MaskError(f'{path}: not a readable .npy array ({e}).') from e
  if arr.ndim == 4 and arr.shape[0] == 1:
    arr = arr[0]
  if arr.ndim != 3:
    raise MaskError(f'{path}: expected an official PDS mask of shape (C, H, W), got shape {arr.shape}.')
  if shape is not None:
    h, w, c = shape
    if arr.shape != (c, h, w):
      raise MaskError(f'{path}: shape {arr.shape} does not match the model: expected (C, H, W) = {(c, h, w)}.')
  return _validate_statistic(np.transpose(arr, (1, 2, 0)), path, None)


def load(freq_mask_path: Optional[str] = None, space_mask_path: Optional[str] = None,
         alpha: float = 5., shape: Optional[Shape] = None) -> Preconditioner:
  """The PDS preconditioner from official `.npy` statistic files (None or '' = identity for that part).

  Args:
    freq_mask_path, space_mask_path: files written by the official `mask_gen_demo.py` or by
      `save_statistics`, shape (C, H, W).
    alpha: α ≥ 1 (official default 5).
    shape: the model's image shape (H, W, C); a file of another size is rejected.
  """
  stats = [read_statistic(p, shape) if p else None for p in (freq_mask_path, space_mask_path)]
  return from_statistics(stats[0], stats[1], alpha, shape, names=(str(freq_mask_path), str(space_mask_path)))


def save_statistics(freq_stat: Optional[np.ndarray], space_stat: Optional[np.ndarray],
                    freq_path: Optional[str] = None, space_path: Optional[str] = None) -> Sequence[str]:
  """Writes (H, W, C) statistics in the official (C, H, W) float32 `.npy` format, atomically.

  Returns the paths written.
  """
  written = []
  for stat, path, name in ((freq_stat, freq_path, 'freq_stat'), (space_stat, space_path, 'space_stat')):
    if stat is None or path is None:
      continue
    stat = _validate_statistic(stat, name, None)
    chw = np.ascontiguousarray(np.transpose(stat, (2, 0, 1)).astype(np.float32))
    atomic_write(path, lambda f: np.save(f, chw))
    written.append(path)
  return written


# ----------------------------------------------------------------------------- α(N)

ALPHA_FEW_STEPS = 5.  # the official default α, kept where PDS pays (N = 10 … 25)
ALPHA_STEPS_PER_UNIT = 5.  # α grows as N / 5 beyond
ALPHA_VERY_FEW_STEPS = 500.  # and as 500 / N² below 10 steps, where α = 5 diverges


def pds_alpha(num_steps: int) -> float:
  """The default PDS mask strength for N sampler steps: α(N) = max(5, N / 5, 500 / N²).

  The paper notes that strong preconditioning pays at few iterations and weak at many (α → ∞ is
  the vanilla sampler). Measured on the exact 64² Gaussian (reverse_diffusion + langevin, official
  variant, KL per dimension of 256 samples; `benchmarks/samplers.py --target resolution` checks
  64², 256², 1024²): the best α was 5 at N = 10 (α ≤ 3 diverge), 3-5 at N = 20-33, 10 at N = 66-100,
  and α = 5 lost to vanilla from N = 100 on (low-frequency variance bias), while α ≥ 10 never did.
  Below 10 steps (`--target alpha_few`; also the 32² natural Gaussian) α = 5 loses to vanilla, by
  59× in KL at N = 5, and the best α grows again: about 50 at N = 3, 20 at N = 5, 10 at N = 7.
  max(5, N / 5, 500 / N²) follows those optima: the official α = 5 (and its 6-12× gain in KL at
  N = 10-20) from 10 to 25 steps, stronger damping of the preconditioner below, and one that fades
  towards the plain sampler (M → I) as N grows. Set `sampling.alpha` to a number for a constant α
  (the official PDS code: 5).
  """
  if not num_steps >= 1:
    raise ValueError(f'pds_alpha: the number of steps must be >= 1, got {num_steps}.')
  return max(ALPHA_FEW_STEPS, num_steps / ALPHA_STEPS_PER_UNIT, ALPHA_VERY_FEW_STEPS / num_steps ** 2)
