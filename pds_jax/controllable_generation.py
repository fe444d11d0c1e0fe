"""Inpainting and colorization with the PC sampler and PDS: score_sde's `controllable_generation.py`.

score_sde's conditional PC samplers (Song et al. 2021, App. I.2) run the unconditional
predictor–corrector chain and, after every corrector and every predictor update, replace the
observed coordinates by a fresh draw of their forward marginal,
  x ← C⁻¹( (C x) ⊙ (1 - m) + (m_t C y + σ_t ξ) ⊙ m ),   (m_t, σ_t) = sde.marginal_prob
with m = 1 on the observed coordinates, y the observation and C a per-pixel change of basis:
  inpainting    C = I, m the known pixels;
  colorization  C = Mᵀ with score_sde's orthonormal colour matrix M (first column (1, 1, 1)/√3, so
                channel 0 of C x is the gray level · √3), m = channel 0 at every pixel.
Here the chain is `pds_jax.samplers.pc.PCSolver` itself (every predictor and corrector, PDS
preconditioned with the official, marginal-preserving or corrector-only variant, `speed_up`), run
by the driver (per-sample keys, one `lax.scan` under `jit` in chunks, NaN detection, pmap /
shard_map); `ConditionalPCSolver` only wraps each update with the projection above. With the
identity preconditioner every update is bit-for-bit score_sde's.

Known region at T (`known_init`, score_sde_pytorch issue #39):
  'data'      score_sde: x_T = y on the known coordinates, prior noise elsewhere. The first
              corrector update then sees clean data next to noise of scale σ_max, a state the
              score model never saw in training;
  'marginal'  the fix asked for there: the known coordinates start at their time-T marginal
              m_T y + σ_T ξ, like every later projection. Measured in `benchmarks/controllable.py`.

Deliberate differences from score_sde (documented, not options):
- `x_mean` of the unknown coordinates is the update's own x_mean (score_sde sets it from the
  already-noised x, so its `denoise` leaves the last predictor noise in the inpainted region);
- the output's known coordinates are the observation itself (score_sde returns m_eps y there,
  off by up to 0.3 % for VP at eps · speed_up);
- colorization starts from the prior in the decoupled basis (score_sde multiplies the RGB prior
  by the channel mask before decoupling, which leaves noise in the gray channel).
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import gaussian, sampling, sde_lib
from pds_jax.samplers.driver import Sampler, ScoreFn, normal, split
from pds_jax.samplers.pc import PCSolver, speed_up_schedule
from pds_jax.shards import as_count
from pds_jax.utils import batch_mul

KNOWN_INITS = ('data', 'marginal')
# score_sde's orthonormal colour matrix: decouple(x) = x @ M puts the gray level (· √3) in channel 0.
COLOR_MATRIX = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                         [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                         [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], np.float32)


def decouple(x: jax.Array, basis: Optional[jax.Array]) -> jax.Array:
  """C x per pixel: x @ basis over the channel axis (identity when basis is None)."""
  return x if basis is None else jnp.einsum('...i,ij->...j', x, basis)


def couple(d: jax.Array, basis: Optional[jax.Array]) -> jax.Array:
  """C⁻¹ d per pixel: d @ basis⁻¹ (basis orthonormal up to float rounding; inverted as score_sde does)."""
  return d if basis is None else jnp.einsum('...i,ij->...j', d, jnp.linalg.inv(basis))


def to_grayscale(images: jax.Array) -> jax.Array:
  """score_sde's gray-scale input: every channel set to the channel mean (R = G = B)."""
  return jnp.broadcast_to(jnp.mean(images, axis=-1, keepdims=True), images.shape)


class ConditionalState(NamedTuple):
  rng: jax.Array
  x: jax.Array
  x_mean: jax.Array
  observed: jax.Array  # (B, H, W, C) the observation in the decoupled basis
  mask: jax.Array      # (B, H, W, C) 1 on the observed coordinates of the decoupled basis


class ConditionalPCSolver(PCSolver):
  """The PC method with score_sde's data-consistency projection after each corrector and predictor update.

  Args (beyond `PCSolver`'s):
    basis: the per-pixel change of basis C (C, C) (None: pixels, for inpainting).
    known_init: 'data' (score_sde) or 'marginal' (issue #39's fix); see the module docstring.
  The driver's `cond` is (observed y (B, H, W, C) in x-coordinates, mask (B, H, W, C) in the
  decoupled basis).
  """
  basis: Optional[jax.Array]
  known_init: str = eqx.field(static=True)
  name = 'pc_conditional'

  def __init__(self, sde: sde_lib.SDE, predictor='reverse_diffusion', corrector='langevin', snr: float = 0.16,
               n_steps: int = 1, probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
               pds_variant: str = 'official', basis: Optional[np.ndarray] = None, known_init: str = 'data'):
    super().__init__(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant)
    if known_init not in KNOWN_INITS:
      raise ValueError(f'known_init = {known_init!r}; choose one of {KNOWN_INITS} (config.inpaint.known_init, '
                       'config.colorize.known_init).')
    self.basis = None if basis is None else jnp.asarray(basis, jnp.float32)
    self.known_init = known_init

  def init(self, rng, x, cond):
    observed, mask = cond
    observed = decouple(observed, self.basis)
    if self.known_init == 'marginal':  # the known coordinates at their time-T marginal m_T y + σ_T ξ
      rng, known_rng = split(rng)
      t = jnp.full((x.shape[0],), self.run_sde.T, x.dtype)
      mean, std = self.run_sde.marginal_prob(observed, t)
      known = mean + batch_mul(std, normal(known_rng, x.shape))
    else:  # score_sde: the observation itself
      known = observed
    x = couple(known * mask + decouple(x, self.basis) * (1. - mask), self.basis)  # score_sde's order of terms
    return ConditionalState(rng, x, x, observed, mask)

  def update(self, update_fn, rng, x, t, state):
    """score_sde's `inpaint_update_fn` / `colorization_update_fn`: the update, then the projection."""
    rng, step_rng = split(rng)
    x, x_mean = update_fn(step_rng, x, t)
    mean, std = self.run_sde.marginal_prob(state.observed, t)
    known = mean + batch_mul(std, normal(rng, x.shape))
    keep = 1. - state.mask
    x = couple(decouple(x, self.basis) * keep + known * state.mask, self.basis)
    x_mean = couple(decouple(x_mean, self.basis) * keep + mean * state.mask, self.basis)
    return x, x_mean

  def output(self, state):
    out = super().output(state)  # x_mean when denoise
    return couple(decouple(out, self.basis) * (1. - state.mask) + state.observed * state.mask, self.basis)


def _check_mask(mask: jax.Array, shape) -> jax.Array:
  """A 0/1 mask (H, W), (H, W, C) or (B, H, W, C) broadcast to the batch shape (B, H, W, C)."""
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == 2:
    mask = mask[..., None]
  try:
    mask = jnp.broadcast_to(mask, shape)
  except ValueError as e:
    raise ValueError(f'mask of shape {tuple(mask.shape)} does not fit the images {tuple(shape)}; expected (H, W), '
                     '(H, W, C) or (B, H, W, C).') from e
  if not bool(jnp.all((mask == 0) | (mask == 1))):
    raise ValueError('mask values must be 0 or 1 (1 = known pixel).')
  return mask


class ConditionalSampler:
  """A conditional PC sampler of score_sde's `get_pc_inpainter` / `get_pc_colorizer` family.

  Called as fn(rng, score_fn, data, mask) (inpainting) or fn(rng, score_fn, gray) (colorization):
  `rng` one key or per-sample keys (B, 2) (required with pmap or a mesh); data in the model's
  variable (after the data scaler). Returns (images after the inverse scaler, NFE per sample).
  The driver (one per data shape) is built on first use.
  """

  def __init__(self, solver: ConditionalPCSolver, inverse_scaler: Callable, preconditioner: 'sampling.Masks',
               colorize: bool, pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
               alpha: Optional[float] = None):
    self.solver, self.inverse_scaler, self.colorize = solver, inverse_scaler, colorize
    # `alpha`: the PDS mask strength (None: α(N) of the chain's N steps, applied to masks(α))
    self.preconditioner, self.alpha = sampling.apply_masks(preconditioner, alpha, solver.num_steps)
    solver.check_preconditioner(self.preconditioner)
    self.pmap, self.mesh = pmap, mesh
    self._samplers = {}

  @property
  def nfe(self) -> int:
    return self.solver.static_nfe

  def sampler(self, shape) -> Sampler:
    shape = tuple(shape)
    if shape not in self._samplers:
      self._samplers[shape] = Sampler(self.solver, shape, self.inverse_scaler, pmap=self.pmap, mesh=self.mesh)
    return self._samplers[shape]

  def __call__(self, rng: jax.Array, score_fn: ScoreFn, data: jax.Array, mask: Optional[jax.Array] = None, *,
               num_chunks: int = 1, progress: bool = False, callback: Optional[Callable] = None):
    data = jnp.asarray(data, jnp.float32)
    if data.ndim != 4:
      raise ValueError(f'images must be (B, H, W, C), got shape {tuple(data.shape)}.')
    if self.colorize:
      if mask is not None:
        raise ValueError('colorization observes the gray channel; it takes no mask.')
      if data.shape[-1] != 3:
        raise ValueError(f'colorization needs 3-channel images, got {data.shape[-1]} channels.')
      mask = jnp.broadcast_to(jnp.asarray([1., 0., 0.]), data.shape)
    else:
      if mask is None:
        raise ValueError('inpainting needs a mask (1 = known pixel).')
      mask = _check_mask(mask, data.shape)
    return self.sampler(data.shape)(rng, score_fn, self.preconditioner, num_chunks=num_chunks, progress=progress,
                                    callback=callback, cond=(data, mask))


def _solver(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant, speed_up,
            basis, known_init) -> ConditionalPCSolver:
  sde, eps = speed_up_schedule(sde, eps, speed_up)
  return ConditionalPCSolver(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant,
                             basis=basis, known_init=known_init)


def get_pc_inpainter(sde: sde_lib.SDE, predictor, corrector, inverse_scaler: Callable, snr: float,
                     n_steps: int = 1, probability_flow: bool = False, continuous: bool = False,
                     denoise: bool = True, eps: float = 1e-5, *, preconditioner: 'sampling.Masks' = None,
                     pds_variant: str = 'official', speed_up: float = 1., known_init: str = 'data',
                     pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
                     alpha: Optional[float] = None) -> ConditionalSampler:
  """score_sde's `get_pc_inpainter` with PDS: inpainter(rng, score_fn, data, mask) -> (images, nfe).

  Args (score_sde's first, then ours):
    sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps: as score_sde
      (predictor / corrector: registered names or classes of `pds_jax.sampling`).
    inverse_scaler: applied to the output.
    continuous: score_sde builds its score function here; pds_jax's inpainter takes `score_fn` at
      call time (`models.utils.get_score_fn(..., continuous=)` already holds it), so it is unused.
    preconditioner: PDS's M, or masks(α) -> M (`sampling.Masks`; None: identity, score_sde's
      inpainter); alpha: α of masks(α) (None: α(N) of the chain's N steps); pds_variant:
      'official', 'marginal_preserving' or 'corrector_only' (`pds_jax.sampling`).
    speed_up: PDS's k: int(sde.N / k) steps, eps · k.
    known_init: 'data' (score_sde) or 'marginal' (score_sde_pytorch #39's fix).
    pmap, mesh: device mapping, as for sampling.
  mask: 1 = known pixel, shape (H, W), (H, W, C) or (B, H, W, C).
  """
  del continuous
  solver = _solver(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant, speed_up,
                   None, known_init)
  return ConditionalSampler(solver, inverse_scaler, preconditioner, colorize=False, pmap=pmap, mesh=mesh, alpha=alpha)


def get_pc_colorizer(sde: sde_lib.SDE, predictor, corrector, inverse_scaler: Callable, snr: float,
                     n_steps: int = 1, probability_flow: bool = False, continuous: bool = False,
                     denoise: bool = True, eps: float = 1e-5, *, preconditioner: 'sampling.Masks' = None,
                     pds_variant: str = 'official', speed_up: float = 1., known_init: str = 'data',
                     pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
                     alpha: Optional[float] = None) -> ConditionalSampler:
  """score_sde's `get_pc_colorizer` with PDS: colorizer(rng, score_fn, gray) -> (images, nfe).

  `gray`: gray-scale images (B, H, W, 3) in the model's variable with R = G = B (`to_grayscale`);
  only their gray level (the channel mean) is read. Arguments as `get_pc_inpainter`.
  """
  del continuous
  solver = _solver(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant, speed_up,
                   COLOR_MATRIX, known_init)
  return ConditionalSampler(solver, inverse_scaler, preconditioner, colorize=True, pmap=pmap, mesh=mesh, alpha=alpha)


class ConditionalErrors:
  """Streaming errors of conditional samples: `add` each batch, `summary()` at the end.

  mode 'inpaint' or 'colorize'. `reference`: the Gaussian data law (data space) when the
  observed images are its exact draws — then the exact conditional law of every image is known and
  the summary holds the conditional error ratio E|x_U - mu_c|^2 / tr(Sigma_c) over the unknown
  coordinates (1 for exact conditional draws).
  """

  def __init__(self, mode: str, reference: Optional[gaussian.GaussianReference] = None):
    if mode not in ('inpaint', 'colorize'):
      raise ValueError(f"ConditionalErrors: mode {mode!r}; choose 'inpaint' or 'colorize'.")
    self.mode, self.reference = mode, reference
    self.count, self.nfe, self.known_abs_error = 0, 0., 0.
    self.unknown_sq_error, self.unknown_count = 0., 0.
    self.exact_sq_error, self.exact_gap, self.trace = 0., 0., None

  def add(self, out: np.ndarray, x: np.ndarray, mask: np.ndarray, nfe: float) -> None:
    """out, x: results and originals (N, H, W, C) in [0, 1]; mask (H, W, C) 1 = known; nfe per sample."""
    n = len(out)
    if self.mode == 'inpaint':
      known_error = np.abs((out - x) * mask).max()
      unknown = np.broadcast_to(mask == 0, out.shape)
    else:
      known_error = np.abs(out.mean(-1) - x.mean(-1)).max()
      unknown = np.ones(out.shape, bool)
    self.known_abs_error = max(self.known_abs_error, float(known_error))
    self.unknown_sq_error += float(np.sum(((out - x) * unknown) ** 2))
    self.unknown_count += float(unknown.sum())
    self.count += n
    self.nfe += float(nfe) * n
    if self.reference is not None:
      if self.mode == 'inpaint':
        conditional = self.reference.condition_on_pixels(x, mask)
      else:
        conditional = gaussian.ColourGaussianReference.plain(self.reference).condition_on_channels(x, COLOR_MATRIX, [0])
      self.trace = conditional.trace
      self.exact_sq_error += float(np.sum(conditional.squared_errors(out)))
      self.exact_gap += conditional.ignore_ratio() * self.trace * n

  def summary(self) -> Dict:
    """nfe_per_sample, known_max_abs_error, unknown_mse_vs_original and, with a reference, exact_conditional."""
    if not self.count:
      raise ValueError('ConditionalErrors.summary: no samples were added.')
    result = {'num_images': self.count, 'nfe_per_sample': as_count(self.nfe / self.count),
              'known_max_abs_error': self.known_abs_error,
              'unknown_mse_vs_original': self.unknown_sq_error / max(self.unknown_count, 1.)}
    if self.reference is not None:
      result['exact_conditional'] = {
          'error_ratio': self.exact_sq_error / self.count / self.trace,
          'ignore_observation_ratio': self.exact_gap / self.count / self.trace,
          'trace_conditional_covariance': self.trace,
          'what': 'mean_i |x_U,i - mu_c,i|^2 / tr(Sigma_c) over the unknown coordinates (1 for exact conditional '
                  'draws); ignore_observation_ratio: the same for exact draws that ignore the observation'}
    return result
