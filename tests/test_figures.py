"""pds_jax.figures: grids and titled panels keep every image pixel-exact and legible."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pds_jax.figures import image_grid, sample_caption, titled_panels


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), size=st.sampled_from([4, 8, 32]), channels=st.sampled_from([1, 3]))
def test_image_grid_places_each_image(n, size, channels):
  images = np.random.default_rng(n).random((n, size, size, channels)).astype(np.float32)
  grid = image_grid(images, pad=2)
  nrow = int(np.ceil(np.sqrt(n)))
  assert grid.dtype == np.uint8 and grid.shape == (int(np.ceil(n / nrow)) * (size + 2) + 2, nrow * (size + 2) + 2, 3)
  r, c = divmod(n - 1, nrow)
  tile = grid[2 + r * (size + 2):2 + r * (size + 2) + size, 2 + c * (size + 2):2 + c * (size + 2) + size]
  np.testing.assert_array_equal(tile, np.round(np.repeat(images[-1], 3 // channels, -1) * 255).astype(np.uint8))


def test_titled_panels_enlarge_each_image_under_its_title():
  small = np.zeros((20, 30, 3), np.uint8)
  small[:, :15] = 255  # left half white, right half black
  out = titled_panels([('vanilla\n20 steps', small), ('PDS', small)], title='a figure', min_width=100, pad=10)
  scale = -(-100 // 30)  # the integer factor that makes 30 px at least 100 px wide
  assert out.shape[1] == 2 * 30 * scale + 3 * 10
  # below the titles, each panel is the image enlarged by `scale` (nearest): a black block on the right
  rows = np.where((out[:, 10 + 15 * scale:10 + 30 * scale] == 0).all(axis=(1, 2)))[0]
  assert len(rows) == 20 * scale and rows[-1] == out.shape[0] - 10 - 1
  # the titles are drawn above the images (dark pixels in the header)
  assert (out[:rows[0], :10 + 30 * scale] < 128).any() and (out[:rows[0], 20 + 30 * scale:] < 128).any()


def test_the_sample_caption_names_dpm_solvers_variant_and_the_grids_langevin_nodes():
  base = {'num_steps': 20, 'preconditioned': False, 'init': 'prior', 'sde': 'VESDE', 'seed': 42}
  few_step = sample_caption({**base, 'method': 'dpm_solver', 'dpm_solver_variant': 'dpm_solver++_sde',
                             'langevin_nodes': 14}, 34, 16)
  assert few_step.startswith('dpm_solver++_sde + Langevin at 14 nodes · 20 steps · NFE 34 · no PDS\n'), few_step
  assert sample_caption({**base, 'method': 'heun'}, 39, 4).startswith('heun · 20 steps · NFE 39 · no PDS\n')
