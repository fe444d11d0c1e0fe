"""Tests for pds_jax.controllable_generation: inpainting and colorization against the exact Gaussian conditional.

On stationary Gaussian images the law of the missing pixels given the known ones is Gaussian in
closed form (docs/method.md §7): an exact conditional sampler gives E‖x_U - μ_c‖² / tr(Σ_c) = 1, one that
ignores the observation (tr Σ_UU + ‖μ_U - μ_c‖²) / tr Σ_c.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pds_jax import controllable_generation as cg
from pds_jax import gaussian, preconditioning, sampling, sde_lib
from pds_jax.samplers.driver import NonFiniteSampleError, sample_keys
from pds_jax.preconditioning import Preconditioner
from pds_jax.utils import batch_mul

SIZE = 16
REF = gaussian.GaussianReference.power_law((SIZE, SIZE, 3), mean=0.45, pixel_std=0.25)
SDE = sde_lib.VESDE(0.01, 25., 2000)
STEPS = 200
SCATTERED = (np.random.default_rng(0).random((SIZE, SIZE)) < 0.5).astype(np.float32)  # the random_50 mask


def _pds(reference, steps=STEPS):
  """Official PDS frequency mask from 200 exact draws clipped to [0, 1], the α(N) default."""
  images = np.clip(np.asarray(reference.sample(jax.random.PRNGKey(5), 200)), 0., 1.)
  freq, _ = preconditioning.compute_statistics(images)
  return preconditioning.from_statistics(freq, None, sampling.pds_alpha(steps), shape=reference.shape)


@pytest.mark.parametrize('pds', [False, True], ids=['vanilla', 'pds'])
def test_inpainting_follows_the_exact_conditional(pds):
  y = REF.sample(jax.random.PRNGKey(0), 64)
  inpainter = cg.get_pc_inpainter(SDE, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, eps=1e-5,
                                  speed_up=2000 / STEPS, preconditioner=_pds(REF) if pds else None)
  out, nfe = inpainter(sample_keys(0, 0, 64), REF.score_fn(SDE), y, SCATTERED)
  out = np.asarray(out)
  assert nfe == 2 * STEPS
  assert np.abs((out - np.asarray(y)) * SCATTERED[..., None]).max() <= 1e-4  # known pixels unchanged
  conditional = REF.condition_on_pixels(y, SCATTERED)
  assert 0.85 <= conditional.error_ratio(out) <= 1.2, conditional.error_ratio(out)
  assert conditional.ignore_ratio() >= 2.3


@pytest.mark.parametrize('pds', [False, True], ids=['vanilla', 'pds'])
def test_colorization_follows_the_exact_conditional(pds):
  reference = gaussian.ColourGaussianReference.correlated(REF)
  x = reference.sample(jax.random.PRNGKey(0), 64)
  gray = cg.to_grayscale(x)
  colorizer = cg.get_pc_colorizer(SDE, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, eps=1e-5,
                                  speed_up=2000 / STEPS, preconditioner=_pds(reference) if pds else None)
  out, _ = colorizer(sample_keys(0, 0, 64), reference.score_fn(SDE), gray)
  out = np.asarray(out)
  np.testing.assert_allclose(out.mean(-1), np.asarray(gray)[..., 0], rtol=0, atol=1e-5)  # gray channel kept
  conditional = reference.condition_on_channels(x, cg.COLOR_MATRIX, [0])
  assert 0.85 <= conditional.error_ratio(out) <= 1.2, conditional.error_ratio(out)
  assert conditional.ignore_ratio() >= 2.3


def _score_sde_inpainter(rng, score_fn, sde, data, mask, eps, num_steps):
  """score_sde's `pc_inpainter` loop (reverse_diffusion + langevin), written out with its key splits,
  with the two documented pds_jax differences: x_mean keeps the update's own x_mean, and the output
  holds the observation on the known pixels. Data and mask are loop values, not constants, and x_T
  is drawn under jit, so that XLA compiles the same arithmetic as the driver (it folds σ_max into
  the normal draw's constants under jit, a 1-ulp difference from an eager draw)."""
  sde = sde.with_num_scales(num_steps)
  predictor = sampling.ReverseDiffusionPredictor(sde, score_fn, False)
  corrector = sampling.LangevinCorrector(sde, score_fn, 0.16, 1)

  def inpaint_update(update_fn, rng, data, mask, x, t):
    rng, step_rng = jax.random.split(rng)
    vec_t = jnp.ones(data.shape[0]) * t
    x, x_mean = update_fn(step_rng, x, vec_t)
    masked_data_mean, std = sde.marginal_prob(data, vec_t)
    masked_data = masked_data_mean + batch_mul(std, jax.random.normal(rng, x.shape))
    return x * (1. - mask) + masked_data * mask, x_mean * (1. - mask) + masked_data_mean * mask

  rng, step_rng = jax.random.split(rng)
  x = jax.jit(lambda key, data, mask: data * mask + sde.prior_sampling(key, data.shape) * (1. - mask))(
      step_rng, data, mask)
  timesteps = jnp.linspace(sde.T, eps, sde.N)

  def loop_body(i, val):
    rng, x, x_mean, data, mask = val
    rng, step_rng = jax.random.split(rng)
    x, x_mean = inpaint_update(corrector.update_fn, step_rng, data, mask, x, timesteps[i])
    rng, step_rng = jax.random.split(rng)
    x, x_mean = inpaint_update(predictor.update_fn, step_rng, data, mask, x, timesteps[i])
    return rng, x, x_mean, data, mask

  _, x, x_mean, _, _ = jax.lax.fori_loop(0, sde.N, loop_body, (rng, x, x, data, mask))
  return jax.jit(lambda x_mean, data, mask: x_mean * (1. - mask) + data * mask)(x_mean, data, mask)


def test_identity_preconditioner_is_the_plain_inpainter_bit_for_bit():
  y = REF.sample(jax.random.PRNGKey(3), 4)
  mask = jnp.broadcast_to(jnp.asarray(SCATTERED)[..., None], y.shape)
  want = _score_sde_inpainter(jax.random.PRNGKey(9), REF.score_fn(SDE), SDE, y, mask, eps=1e-3, num_steps=20)
  inpainter = cg.get_pc_inpainter(SDE, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, eps=1e-5, speed_up=100,
                                  preconditioner=Preconditioner())
  for chunks in (1, 3):
    got, _ = inpainter(jax.random.PRNGKey(9), REF.score_fn(SDE), y, SCATTERED, num_chunks=chunks)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_known_region_starts_from_the_data_or_its_time_T_marginal():
  y = REF.sample(jax.random.PRNGKey(4), 8)
  mask = jnp.broadcast_to(jnp.asarray(SCATTERED)[..., None], y.shape)
  prior = SDE.prior_sampling(jax.random.PRNGKey(1), y.shape)
  for known_init in cg.KNOWN_INITS:
    solver = cg.ConditionalPCSolver(SDE, known_init=known_init, eps=1e-5)
    state = solver.init(jax.random.PRNGKey(2), prior, (y, mask))
    known = np.asarray(state.x)[np.asarray(mask) == 1]
    unknown = np.asarray(state.x)[np.asarray(mask) == 0]
    np.testing.assert_array_equal(unknown, np.asarray(prior)[np.asarray(mask) == 0])
    if known_init == 'data':  # score_sde: clean data beside noise of scale σ_max = 25
      np.testing.assert_array_equal(known, np.asarray(y)[np.asarray(mask) == 1])
    else:  # score_sde_pytorch #39: y + σ_max ξ, like every later projection
      assert 22 < np.std(known - np.asarray(y)[np.asarray(mask) == 1]) < 28
  with pytest.raises(ValueError, match="known_init = 'clean'"):
    cg.ConditionalPCSolver(SDE, known_init='clean')


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(SIZE, SIZE), (SIZE, SIZE, 1), (SIZE, SIZE, 3), (2, SIZE, SIZE, 3), (SIZE, 8),
                              (SIZE, SIZE, 2), (3, SIZE, SIZE, 3), (SIZE,)]),
       dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.bool_, np.int32]),
       bad_value=st.sampled_from([None, 0.5, 2, -1]))
def test_mask_contract(shape, dtype, bad_value):
  mask = (np.arange(int(np.prod(shape))).reshape(shape) % 2).astype(dtype)
  fits = shape in [(SIZE, SIZE), (SIZE, SIZE, 1), (SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
  representable = dtype != np.bool_ and not (dtype == np.uint8 and bad_value == -1) and not (
      np.issubdtype(dtype, np.integer) and bad_value == 0.5)  # an integer mask cannot hold 0.5
  if bad_value is not None and representable:
    mask.flat[0] = bad_value
  else:
    bad_value = None
  if fits and bad_value is None:
    out = cg._check_mask(mask, (2, SIZE, SIZE, 3))
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == jnp.float32
    assert float(out.sum()) == pytest.approx(np.broadcast_to(
        mask.reshape(shape + (1,) if len(shape) == 2 else shape).astype(np.float32), (2, SIZE, SIZE, 3)).sum())
  else:
    with pytest.raises(ValueError, match='does not fit|must be 0 or 1'):
      cg._check_mask(mask, (2, SIZE, SIZE, 3))


def test_bad_calls_and_non_finite_samples_are_reported():
  y = REF.sample(jax.random.PRNGKey(0), 2)
  inpainter = cg.get_pc_inpainter(SDE, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, speed_up=400)
  with pytest.raises(ValueError, match='needs a mask'):
    inpainter(jax.random.PRNGKey(0), REF.score_fn(SDE), y)
  colorizer = cg.get_pc_colorizer(SDE, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, speed_up=400)
  with pytest.raises(ValueError, match='takes no mask'):
    colorizer(jax.random.PRNGKey(0), REF.score_fn(SDE), y, SCATTERED)
  with pytest.raises(ValueError, match='3-channel'):
    colorizer(jax.random.PRNGKey(0), REF.score_fn(SDE), y[..., :1])

  def broken(x, t):  # NaN below t = 0.5
    return jnp.where(t[:, None, None, None] < 0.5, jnp.nan, REF.score(x, t, SDE))

  with pytest.raises(NonFiniteSampleError, match='pc_conditional: samples became non-finite.*at step 3 of 5 \(t = 0.253\)'):
    inpainter(jax.random.PRNGKey(0), broken, y, SCATTERED)


def test_conditional_errors_stream_the_exact_ratio():
  """The originals are exact draws of their own conditional: streamed over two batches, ratio ≈ 1 and equal
  to the one-shot value; the known pixels' error and the unknown MSE are those of the arrays."""
  x = np.asarray(REF.sample(jax.random.PRNGKey(3), 64))
  mask = np.repeat(SCATTERED[..., None], 3, axis=-1)
  errors = cg.ConditionalErrors('inpaint', REF)
  noisy = x + 0.1 * (1. - mask)  # the unknown pixels off by 0.1, the known ones exact
  for half in (slice(0, 32), slice(32, 64)):
    errors.add(x[half], x[half], mask, nfe=40)
  summary = errors.summary()
  conditional = REF.condition_on_pixels(x, mask)
  assert summary['num_images'] == 64 and summary['nfe_per_sample'] == 40
  assert summary['known_max_abs_error'] == 0. and summary['unknown_mse_vs_original'] == 0.
  ratio = summary['exact_conditional']['error_ratio']
  np.testing.assert_allclose(ratio, conditional.error_ratio(x), rtol=1e-6)
  assert 0.85 <= ratio <= 1.15, ratio
  np.testing.assert_allclose(summary['exact_conditional']['ignore_observation_ratio'], conditional.ignore_ratio(),
                             rtol=1e-6)
  shifted = cg.ConditionalErrors('inpaint')
  shifted.add(noisy, x, mask, nfe=10.5)
  result = shifted.summary()
  np.testing.assert_allclose(result['unknown_mse_vs_original'], 0.01, rtol=1e-5)
  assert result['known_max_abs_error'] == 0. and result['nfe_per_sample'] == 10.5 and 'exact_conditional' not in result
  with pytest.raises(ValueError, match="mode 'sample'"):
    cg.ConditionalErrors('sample')
  with pytest.raises(ValueError, match='no samples were added'):
    cg.ConditionalErrors('colorize').summary()
