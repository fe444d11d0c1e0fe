"""Tests for pds_jax.preconditioning against a NumPy transcription of the official (NCHW) operators."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pds_jax import preconditioning as pc
from pds_jax.preconditioning import MaskError, Preconditioner


def _official_masks(freq, space, alpha):
  """The official get_sampling_fn normalisation, on NCHW (1, C, H, W) float32 arrays."""
  out = []
  for m in (freq, space):
    if m is None:
      out.append(np.ones(1, np.float32))
      continue
    m = m.astype(np.float32) / m.max()
    out.append(1. / ((m + alpha - 1) / alpha))
  return out


def _official_m(xi, freq_mask, space_mask):
  """M ξ = Re idft2d(dft2d(ξ · M_s) · M_f), NCHW."""
  return np.real(np.fft.ifft2(np.fft.fft2(xi * space_mask, axes=(2, 3)) * freq_mask, axes=(2, 3)))


def _official_mmt(g, freq_mask, space_mask):
  """M Mᵀ g = Re idft2d(M_f · dft2d(M_s² · idft2d(M_f · dft2d(g)))), NCHW."""
  inner = np.fft.ifft2(freq_mask * np.fft.fft2(g, axes=(2, 3)), axes=(2, 3))
  return np.real(np.fft.ifft2(freq_mask * np.fft.fft2(space_mask ** 2 * inner, axes=(2, 3)), axes=(2, 3)))


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def _nchw(x):
  return np.transpose(x, (0, 3, 1, 2))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(2, 9), w=st.integers(2, 9), c=st.integers(1, 4), b=st.integers(1, 3),
       use_freq=st.booleans(), use_space=st.booleans(), alpha=st.floats(1.05, 20.), seed=st.integers(0, 2 ** 16))
def test_operators_match_the_official_formulas(h, w, c, b, use_freq, use_space, alpha, seed):
  rs = np.random.RandomState(seed)
  freq = rs.uniform(0.01, 3., (1, c, h, w)).astype(np.float32) if use_freq else None
  space = rs.uniform(0.01, 1., (1, c, h, w)).astype(np.float32) if use_space else None
  f_mask, s_mask = _official_masks(freq, space, alpha)
  precond = pc.from_statistics(None if freq is None else _nhwc(freq)[0], None if space is None else _nhwc(space)[0],
                               alpha)
  assert precond.is_identity == (freq is None and space is None)
  for array, op in ((precond.freq_mask, freq), (precond.space_mask, space)):
    assert (array is None) == (op is None)
  xi = rs.randn(b, c, h, w).astype(np.float32)
  got_m = np.asarray(precond.apply(jnp.asarray(_nhwc(xi))))
  got_mmt = np.asarray(precond.apply_mmt(jnp.asarray(_nhwc(xi))))
  assert got_m.shape == got_mmt.shape == (b, h, w, c) and got_m.dtype == np.float32
  np.testing.assert_allclose(got_m, _nhwc(_official_m(xi, f_mask, s_mask)), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got_mmt, _nhwc(_official_mmt(xi, f_mask, s_mask)), rtol=2e-5, atol=2e-5)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(2, 8), c=st.integers(1, 3), alpha=st.floats(1., 10.), seed=st.integers(0, 2 ** 16))
def test_masks_lie_in_the_documented_range(h, c, alpha, seed):
  stat = np.random.RandomState(seed).uniform(0.05, 4., (h, h, c))
  mask = pc.normalize_mask(stat, alpha)
  assert mask.dtype == np.float32 and mask.shape == (h, h, c)
  assert mask.min() >= 1 - 1e-6  # the max-power bin has M = 1
  # float32 statistics: at α → 1 the mask is max / min, whose rounding reaches ~1e-6 relative
  assert mask.max() <= alpha / (alpha - 1 + stat.min() / stat.max()) * (1 + 1e-5)
  assert np.isclose(mask[np.unravel_index(stat.argmax(), stat.shape)], 1.)


def test_identity_does_nothing_at_all():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 4, 4, 3), jnp.float32)
  precond = Preconditioner()
  assert precond.apply(x) is x and precond.apply_mmt(x) is x
  # no paths, or empty ones (`--config.sampling.freq_mask_path=` on the command line), load the identity
  for paths in ((None, None), ('', '')):
    loaded = pc.load(*paths, shape=(4, 4, 3))
    assert loaded.freq_mask is None and loaded.space_mask is None and loaded.apply(x) is x


def test_mmt_is_m_times_m_transpose():
  """Dense check: build M column by column and compare M Mᵀ with apply_mmt."""
  rs = np.random.RandomState(1)
  shape = (4, 5, 2)
  freq = rs.uniform(0.1, 2, shape)
  freq = 0.5 * (freq + np.roll(freq[::-1, ::-1], (1, 1), axis=(0, 1)))  # |F x|² of real data is symmetric
  precond = pc.from_statistics(freq, rs.uniform(0.1, 1, shape), alpha=1.5)
  n = int(np.prod(shape))
  eye = jnp.eye(n, dtype=jnp.float32).reshape((n,) + shape)
  m = np.asarray(precond.apply(eye)).reshape(n, n).T  # column j = M e_j
  mmt = np.asarray(precond.apply_mmt(eye)).reshape(n, n).T
  np.testing.assert_allclose(mmt, m @ m.T, atol=1e-5)


def test_statistics_follow_the_official_definitions_and_stream():
  rs = np.random.RandomState(2)
  images = rs.uniform(0, 1, (37, 6, 5, 3))
  freq, space = pc.compute_statistics(images, batch_size=8)
  want_freq = np.log(1 + np.mean(np.abs(np.fft.fft2(images, axes=(1, 2))) ** 2, axis=0))
  np.testing.assert_allclose(freq, want_freq, rtol=1e-5)
  np.testing.assert_allclose(space, np.mean(images ** 2, axis=0), rtol=1e-5)
  streamed = pc.compute_statistics(iter([images[:10], images[10:11], images[11:]]))
  np.testing.assert_allclose(streamed[0], freq, rtol=1e-6)
  np.testing.assert_allclose(streamed[1], space, rtol=1e-6)


def test_known_spectrum_gives_the_closed_form_statistic():
  """A single cosine image has |F x|² = (HW/2)² at ±k and 0 elsewhere (mean removed)."""
  h = w = 8
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  image = np.cos(2 * np.pi * 2 * xx / w)[None, :, :, None]
  freq, _ = pc.compute_statistics(image)
  expected = np.zeros((h, w, 1))
  expected[0, 2] = expected[0, w - 2] = np.log1p((h * w / 2) ** 2)
  np.testing.assert_allclose(freq, expected, atol=1e-4)


def test_official_file_round_trip(tmp_path):
  rs = np.random.RandomState(3)
  freq, space = rs.uniform(0.1, 9, (8, 6, 3)), rs.uniform(0.1, 1, (8, 6, 3))
  paths = pc.save_statistics(freq, space, str(tmp_path / 'freq_mask.npy'), str(tmp_path / 'space_mask.npy'))
  on_disk = np.load(paths[0])
  assert on_disk.shape == (3, 8, 6) and on_disk.dtype == np.float32  # official (C, H, W)
  np.testing.assert_allclose(np.transpose(on_disk, (1, 2, 0)), freq, rtol=1e-6)
  loaded = pc.load(*paths, alpha=3., shape=(8, 6, 3))
  direct = pc.from_statistics(freq, space, 3.)
  np.testing.assert_allclose(loaded.freq_mask, direct.freq_mask, rtol=1e-6)
  np.testing.assert_allclose(loaded.space_mask, direct.space_mask, rtol=1e-6)
  # The official code also reads (1, C, H, W) arrays, as mask_gen_demo.py's torch means could give.
  np.save(tmp_path / 'batched.npy', on_disk[None])
  np.testing.assert_allclose(pc.load(str(tmp_path / 'batched.npy'), alpha=3.).freq_mask, direct.freq_mask, rtol=1e-6)
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def _save(tmp_path, name, array):
  path = str(tmp_path / name)
  np.save(path, array)
  return path


@pytest.mark.parametrize('array,message', [
    (np.ones((3, 8, 7)), r'shape \(3, 8, 7\) does not match the model: expected \(C, H, W\) = \(3, 8, 8\)'),
    (np.ones((8, 8)), r'expected an official PDS mask of shape \(C, H, W\), got shape \(8, 8\)'),
    (np.full((3, 8, 8), np.nan), 'NaN/Inf'),
    (-np.ones((3, 8, 8)), 'negative values'),
    (np.zeros((3, 8, 8)), 'zero everywhere'),
])
def test_bad_mask_files_are_named_in_the_error(tmp_path, array, message):
  path = _save(tmp_path, 'bad_freq.npy', array)
  with pytest.raises(MaskError, match=message) as info:
    pc.load(freq_mask_path=path, shape=(8, 8, 3))
  assert path in str(info.value)


def test_unreadable_and_missing_files(tmp_path):
  junk = tmp_path / 'junk.npy'
  junk.write_bytes(b'not a numpy file')
  with pytest.raises(MaskError, match='junk.npy: not a readable .npy'):
    pc.load(space_mask_path=str(junk))
  with pytest.raises(MaskError, match='missing.npy: mask file not found'):
    pc.load(freq_mask_path=str(tmp_path / 'missing.npy'))


@pytest.mark.parametrize('alpha,message', [(0.5, 'alpha must be a finite number >= 1'),
                                           (float('inf'), 'alpha must be a finite number >= 1'),
                                           (1., r'm_hat \+ alpha - 1 <= 0 at 1 entries')])
def test_alpha_validation(alpha, message):
  stat = np.ones((4, 4, 1))
  stat[0, 0, 0] = 0.  # a zero bin is fine for alpha > 1 but divides by zero at alpha = 1
  with pytest.raises(MaskError, match=message):
    pc.from_statistics(stat, alpha=alpha)
  pc.from_statistics(stat, alpha=1.01)


def test_in_memory_shape_mismatch_names_the_statistic():
  with pytest.raises(MaskError, match=r'space_stat: shape \(H, W, C\) = \(4, 4, 1\) does not match'):
    pc.from_statistics(None, np.ones((4, 4, 1)), shape=(8, 8, 1))
