"""Tests for pds_jax.likelihood: score_sde's bits/dim against the exact Gaussian log-density (docs/method.md §7).

On stationary Gaussian data every marginal is Gaussian, so −log p(x) is known in closed form; the
probability-flow ODE's flow map and the integral of its divergence are too:
  U(z - m_T μ) = sqrt(v(T) / v(eps)) U(x - m_eps μ),   ∫_eps^T ∇·f̃ dt = ½ Σ_k log(v_k(T) / v_k(eps)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pds_jax import gaussian, likelihood, sde_lib
from pds_jax.samplers.driver import NonFiniteSampleError, sample_keys

REF_32 = gaussian.GaussianReference.power_law((32, 32, 3), mean=0.45, pixel_std=0.25)  # configs/gaussian/natural_32
REF_8 = gaussian.GaussianReference.power_law((8, 8, 3), mean=0.45, pixel_std=0.25)
VE = sde_lib.VESDE(0.01, 25., 2000)
VP = sde_lib.VPSDE()
CENTRED = lambda x: (x + 1.) / 2.  # datasets.get_data_inverse_scaler of centred data


def _bpd(logp, dim, offset=8.):
  return -logp / (dim * np.log(2.)) + offset


def test_offset_is_score_sde_s():
  assert likelihood.bpd_offset(lambda x: x) == 8.
  assert likelihood.bpd_offset(CENTRED) == 7.


def test_mean_bpd_of_64_images_is_within_0_01_of_the_exact_value():
  x = REF_32.sample(jax.random.PRNGKey(0), 64)
  fn = likelihood.get_likelihood_fn(VE, lambda x: x)  # Rademacher, RK45, rtol = atol = 1e-5, eps = 1e-5
  bpd, z, nfe = fn(sample_keys(0, 0, 64), REF_32.score_fn(VE), x)
  exact = _bpd(REF_32.log_prob(x), x[0].size)
  assert abs(float(np.mean(bpd)) - exact.mean()) < 0.01, (float(np.mean(bpd)), exact.mean())
  assert 0.005 < float(np.std(np.asarray(bpd) - exact)) < 0.05  # Hutchinson's per-image noise, ~0.017 here
  assert z.shape == x.shape and 30 < nfe < 1000


@pytest.mark.parametrize('sde, inverse_scaler, reference', [(VP, CENTRED, REF_8.affine(2., -1.)), (VE, None, REF_8)],
                         ids=['vp', 've'])
def test_exact_divergence_matches_the_closed_form_per_image(sde, inverse_scaler, reference):
  x = reference.sample(jax.random.PRNGKey(1), 6)
  fn = likelihood.get_likelihood_fn(sde, inverse_scaler or (lambda x: x), hutchinson_type='exact')
  bpd, z, _ = fn(jax.random.PRNGKey(0), reference.score_fn(sde), x)
  bpd, dim, eps = np.asarray(bpd, np.float64), x[0].size, 1e-5
  # The estimator's own target: the prior at T pushed through the flow (exact flow map and divergence).
  (m_eps_mean, v_eps), (m_T_mean, v_T) = (reference.marginal(sde, jnp.full((1,), t)) for t in (eps, 1.))
  v_eps, v_T = np.asarray(v_eps[0], np.float64), np.asarray(v_T[0], np.float64)
  z_exact = m_T_mean[0] + jnp.real(jnp.fft.ifft2(jnp.fft.fft2(x - m_eps_mean[0], axes=(1, 2)) * jnp.sqrt(v_T / v_eps),
                                                 axes=(1, 2)))
  np.testing.assert_allclose(z, z_exact, atol=2e-3 * float(jnp.max(jnp.abs(z_exact))))
  model = np.asarray(sde.prior_logp(z_exact), np.float64) + 0.5 * np.sum(np.log(v_T / v_eps))
  np.testing.assert_allclose(bpd, _bpd(model, dim, fn.offset), rtol=0, atol=1e-3)
  # Against the data law itself: VP's prior N(0, I) is p_T to 1e-4, VE's N(0, σ_max² I) misses p_T's mean
  # 0.45 and its Σ, a per-image prior mismatch of a few 1e-3 bits/dim at 8×8 (it shrinks as 1/sqrt(D)).
  data_law = gaussian.GaussianReference(mean=reference.mean, spectrum=reference.spectrum).log_prob(x)
  tolerance = 1e-3 if sde is VP else 6e-3
  np.testing.assert_allclose(bpd, _bpd(data_law, dim, fn.offset), rtol=0, atol=tolerance)


def test_an_image_s_bpd_does_not_depend_on_its_batch():
  x = REF_8.sample(jax.random.PRNGKey(2), 6)
  keys = sample_keys(3, 0, 6)
  fn = likelihood.get_likelihood_fn(VE, lambda x: x)
  whole, _, _ = fn(keys, REF_8.score_fn(VE), x)
  part, _, _ = fn(keys[2:4], REF_8.score_fn(VE), x[2:4])
  np.testing.assert_allclose(whole[2:4], part, rtol=0, atol=1e-6)
  other, _, _ = fn(sample_keys(4, 0, 6), REF_8.score_fn(VE), x)  # other Hutchinson noise, other estimates
  assert np.all(np.asarray(other) != np.asarray(whole))


def test_uniform_dequantization_fills_each_8_bit_bin():
  levels = jnp.arange(256, dtype=jnp.float32).reshape(1, 16, 16, 1) / 255.
  x = likelihood.uniform_dequantize(jnp.tile(levels, (4, 1, 1, 3)), sample_keys(0, 0, 4))
  bins = np.floor(np.asarray(x) * 256.)
  np.testing.assert_array_equal(bins, np.broadcast_to(np.arange(256).reshape(1, 16, 16, 1), x.shape))
  assert 0.4 < float(np.mean(np.asarray(x) * 256. - bins)) < 0.6  # u ~ U[0, 1)
  one, _ = likelihood.image_keys(sample_keys(0, 0, 4))
  assert one.shape == (4, 2)


def test_bad_settings_and_failed_solves_are_reported():
  with pytest.raises(ValueError, match="hutchinson_type = 'gauss'"):
    likelihood.get_likelihood_fn(VE, lambda x: x, hutchinson_type='gauss')
  with pytest.raises(ValueError, match='eps must lie in'):
    likelihood.get_likelihood_fn(VE, lambda x: x, eps=0.)
  with pytest.raises(ValueError, match="ode_method = 'euler'"):
    likelihood.get_likelihood_fn(VE, lambda x: x, method='euler')

  def broken(x, t):  # NaN above t = 0.5
    return jnp.where(t[:, None, None, None] > 0.5, jnp.nan, REF_8.score(x, t, VE))

  fn = likelihood.get_likelihood_fn(VE, lambda x: x, max_steps=64)
  with pytest.raises(NonFiniteSampleError, match='likelihood: the adaptive solve of 2 of 2 images did not reach T'):
    fn(jax.random.PRNGKey(0), broken, REF_8.sample(jax.random.PRNGKey(0), 2))
