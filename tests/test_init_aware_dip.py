"""Tests for pds_jax.init_aware.dip (Hartigan's dip test) and .sigma_t (the σ_T selection)."""
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pds_jax import gaussian
from pds_jax.init_aware import dip, sigma_t, toys

# Reference dips from the `diptest` package 0.12.0 (a port of R's diptest C code, AS 217 with
# Maechler's fixes), recorded once: dipstat(x) and dipstat(x, allow_zero=False). Our implementation
# matched it exactly on 6000 further random samples (n = 1 … 3000, with ties) when written.
REFERENCE_DIPS = {
    'bimodal10': (np.array([0.1, 0.2, 0.25, 0.3, 0.32, 2.0, 2.1, 2.15, 2.3, 2.4]), 0.20192307692307693),
    'ties': (np.array([1., 1., 1., 2., 2., 3., 3., 3., 3., 7., 7., 8.]), 0.125),
    'three': (np.array([0., 1., 5.]), 0.16666666666666666),
    'normal200': (np.random.default_rng(0).normal(size=200), 0.017943863240194875),
    'mixture500': (np.concatenate([np.random.default_rng(1).normal(0, 1, 250),
                                   np.random.default_rng(2).normal(4, 1, 250)]), 0.06278491540273573),
}


@pytest.mark.parametrize('name', sorted(REFERENCE_DIPS))
def test_dip_matches_the_reference_implementation(name):
  x, want = REFERENCE_DIPS[name]
  assert dip.dip_statistic(x) == pytest.approx(want, rel=1e-12)
  assert dip.dip_statistic(x, allow_zero=False) == pytest.approx(want, rel=1e-12)


def test_dip_of_degenerate_samples():
  assert dip.dip_statistic(np.arange(10.)) == 0.  # evenly spaced: the empirical CDF is unimodal
  assert dip.dip_statistic(np.arange(10.), allow_zero=False) == pytest.approx(1 / 20)  # R's min.is.0 = FALSE
  assert dip.dip_statistic([3.]) == 0. and dip.dip_statistic([3.], allow_zero=False) == 0.5
  assert dip.dip_statistic([2., 2., 2.]) == 0.
  with pytest.raises(ValueError, match='empty'):
    dip.dip_statistic([])
  with pytest.raises(ValueError, match='NaN'):
    dip.dip_statistic([1., np.nan])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1000, 1000).map(float), min_size=1, max_size=60),  # ties but no sub-ulp gaps
       st.floats(0.01, 100.), st.floats(-50., 50.), st.randoms(use_true_random=False))
def test_dip_is_invariant_to_order_and_affine_maps(values, scale, shift, random):
  x = np.asarray(values)
  d = dip.dip_statistic(x)
  assert 0. <= d <= 0.25 + 1e-12
  random.shuffle(values)
  assert dip.dip_statistic(values) == d
  assert dip.dip_statistic(scale * x + shift) == pytest.approx(d, rel=1e-6, abs=1e-12)


def test_dip_test_separates_unimodal_from_bimodal_samples():
  rng = np.random.default_rng(3)
  d_uni, p_uni = dip.dip_test(rng.random(500))
  d_bi, p_bi = dip.dip_test(np.concatenate([rng.normal(0, 1, 250), rng.normal(5, 1, 250)]))
  assert d_uni < 0.03 < d_bi and p_uni > 0.05 and p_bi < 0.005, (d_uni, p_uni, d_bi, p_bi)
  null = dip.uniform_null_dips(500, 200)
  assert null is dip.uniform_null_dips(500, 200) and not null.flags.writeable  # cached
  assert dip.dip_p_value(null.max() + 1e-9, null) == 0. and dip.dip_p_value(0., null) == 1.
  # R's tabulated null (qDiptab, interpolated by diptest 0.12.0) for n = 500: median 0.016452,
  # 95% quantile 0.023729. 200 Monte Carlo draws estimate them within a few percent.
  np.testing.assert_allclose(np.quantile(null, [0.5, 0.95]), [0.016452, 0.023729], rtol=0.06)


# ----------------------------------------------------------------------------- σ_T


def test_sigma_t_of_the_2d_grid_toy_is_about_one():
  x0 = np.asarray(toys.grid_gaussian_mixture().sample(jax.random.PRNGKey(0), 2000))
  value, onsets = sigma_t.select_sigma_t(x0, jax.random.PRNGKey(1), num_directions=12, rtol=0.02,
                                         num_null_draws=50)
  assert onsets.shape == (12,) and value == onsets.max()
  assert 0.5 < value < 1.5, onsets


def test_sigma_t_of_two_atoms_is_below_the_exact_onset():
  # ½δ(-a) + ½δ(a) convolved with N(0, σ²) is bimodal exactly for σ < a.
  a = 1.
  x0 = np.where(np.arange(1000) % 2 == 0, -a, a)[:, None] * np.ones((1, 3)) / np.sqrt(3)
  value, onsets = sigma_t.select_sigma_t(x0, jax.random.PRNGKey(2), num_directions=8, rtol=0.02,
                                         num_null_draws=50)
  # Projections shrink the separation to a |θ·1| / √3; the best direction is close to the truth.
  assert 0.4 * a < value <= 1.05 * a, onsets
  lenient, _ = sigma_t.select_sigma_t(x0, jax.random.PRNGKey(2), num_directions=8, rtol=0.02,
                                      num_null_draws=50, alpha=0.05)
  assert lenient <= value


def test_sigma_t_of_unimodal_data_is_the_lower_bound_and_images_are_flattened():
  x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (500, 4, 4, 3)))
  value, onsets = sigma_t.select_sigma_t(x0, jax.random.PRNGKey(4), num_directions=4, bounds=(0.2, 2.),
                                         rtol=0.05, num_null_draws=50)
  assert np.all(onsets < 0.2 * 1.06), onsets


@pytest.mark.parametrize('kwargs, match', [
    ({'x0': np.zeros(10)}, r'x0 must be \(N, D\) or \(N, H, W, C\) with N >= 4, got shape \(10,\)'),
    ({'x0': np.zeros((3, 2))}, 'N >= 4'),
    ({'bounds': (1., 0.5)}, '0 < sigma_lo < sigma_hi'),
    ({'alpha': 1.5}, r'alpha must lie in \(0, 1\)'),
    ({'rtol': 0.}, 'rtol > 0'),
])
def test_select_sigma_t_rejects_bad_arguments(kwargs, match):
  args = {'x0': np.zeros((10, 2)), 'rng': jax.random.PRNGKey(0)}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sigma_t.select_sigma_t(**args)


# ----------------------------------------------------------------------------- σ_T for images


def _two_cluster_images(separation: float, n: int = 1500, seed: int = 0) -> np.ndarray:
  """8×8×3 images μ ± separation · u + 0.05 ε: two clusters along one smooth unit pattern u."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:8, :8] / 8.
  u = np.stack([np.cos(np.pi * xx), np.sin(np.pi * yy), xx * yy], -1)
  u /= np.linalg.norm(u)
  signs = rng.choice([-1., 1.], size=n)[:, None, None, None]
  return (0.5 + separation * signs * u + 0.05 * rng.standard_normal((n, 8, 8, 3))).astype(np.float32)


def test_principal_rule_scales_with_the_cluster_separation_and_leaves_gaussian_data_alone():
  picks = {}
  for separation in (1., 2.):
    x = _two_cluster_images(separation)
    picks[separation], curve = sigma_t.select_sigma_t_principal(x, tolerance=0.05, bounds=(0.05, 20.))
    i = curve['sigma'].index(picks[separation])
    assert max(curve['excess'][i:]) <= 0.05 < curve['excess'][i - 1]
  assert 1. < picks[1.] < 2.5 and 1.7 < picks[2.] / picks[1.] < 2.6, picks  # measured 1.62 and 3.51
  gauss = gaussian.GaussianReference.power_law((8, 8, 3)).sample(jax.random.PRNGKey(0), 1500)
  sigma, curve = sigma_t.select_sigma_t_principal(np.asarray(gauss), bounds=(0.05, 20.))
  assert sigma == curve['sigma'][0] == pytest.approx(0.05)  # q_T is exact at every σ


def test_principal_rule_on_the_bundled_natural_patches():
  from configs.default_model import get_config
  from pds_jax import datasets
  config = get_config()
  images = np.concatenate(list(datasets.iterate_images(config, 'train', 2048, seed=0)))
  sigma, _ = sigma_t.select_sigma_t_principal(images)
  assert 6. < sigma < 16., sigma  # measured 10.1 (2048 patches) and 12.0 (4096); leading principal std 9.9


def test_principal_rule_rejects_bad_input():
  x = _two_cluster_images(1., n=20)
  with pytest.raises(ValueError, match=r'need images \(N, H, W, C\) with N >= num_directions'):
    sigma_t.select_sigma_t_principal(x.reshape(20, -1))
  with pytest.raises(ValueError, match='tolerance > 0'):
    sigma_t.select_sigma_t_principal(x, tolerance=0.)
