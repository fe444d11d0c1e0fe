"""`--mode stats`: the official PDS mask statistics of a dataset, written as `.npy` files and pictures.

Streams images in [0, 1] through `preconditioning.compute_statistics`
  freq_stat  = log(1 + mean_i |F x_i|²)   (F: 2-D DFT per channel; PDS mask_gen_demo.py)
  space_stat = mean_i x_i²
and writes, atomically, in `out_dir` (tag = dataset name, plus LSUN category or file name):
  freq_<tag>_<size>.npy, space_<tag>_<size>.npy   official (C, H, W) float32, for
                                                  config.sampling.freq_mask_path / space_mask_path
  freq_<tag>_<size>.png    freq_stat per channel, fftshifted (zero frequency in the centre)
  space_<tag>_<size>.png   space_stat per channel
"""
from __future__ import annotations

import io
import os
import re
from typing import Optional

import numpy as np

from pds_jax import datasets, preconditioning
from pds_jax.io_utils import atomic_write


def dataset_tag(config) -> str:
  """A file-name-safe name of config.data.dataset ('cifar10', 'lsun_bedroom', 'folder_<name>', ...)."""
  data = config.data
  tag = data.dataset
  if data.dataset == 'LSUN' and data.get('category'):
    tag = f'lsun_{data.category}'
  elif data.dataset in ('folder', 'npz', 'npy') and data.get('path'):
    name = os.path.splitext(os.path.basename(os.path.normpath(data.path)))[0]
    tag = f'{data.dataset}_{name}'
  return re.sub(r'[^a-z0-9_-]+', '_', tag.lower())


def plot_statistic(stat: np.ndarray, title: str, shift: bool) -> bytes:
  """PNG bytes of an (H, W, C) statistic, one panel per channel with its colour bar."""
  from matplotlib.figure import Figure
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  channels = stat.shape[-1]
  fig = Figure(figsize=(3.2 * channels, 3.), dpi=100)
  FigureCanvasAgg(fig)
  for c in range(channels):
    ax = fig.add_subplot(1, channels, c + 1)
    panel = np.fft.fftshift(stat[..., c]) if shift else stat[..., c]
    h, w = panel.shape
    extent = (-(w // 2) - .5, w - w // 2 - .5, h - h // 2 - .5, -(h // 2) - .5) if shift else None
    im = ax.imshow(panel, cmap='viridis', extent=extent, interpolation='nearest')
    ax.set_title(f'{title}, channel {c}' if channels > 1 else title, fontsize=9)
    if shift:
      ax.set_xlabel('k_x (cycles / image)', fontsize=8)
      ax.set_ylabel('k_y', fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  return buffer.getvalue()


def write_mask_statistics(config, out_dir: str, num_images: Optional[int] = None, progress: bool = True,
                          split: str = 'train', batch_size: int = 128) -> dict:
  """Computes the PDS statistics of config.data.dataset and writes the mask files and pictures.

  Args:
    config: reads config.data (see `datasets.get_dataset`), config.seed and config.sampling.alpha.
    out_dir: folder for the files (created if needed).
    num_images: use a random subset of this many images, drawn with config.seed (all when None;
      the official mask_gen_demo.py uses 200 random CIFAR-10 training images).
    progress: show a tqdm bar over images.
    split: 'train' (as the official script), 'eval' or 'all'.

  Returns:
    dict with freq_path, space_path, freq_png, space_png, num_images, image_shape (H, W, C),
    alpha and condition_number (max / min of M's mask factors at that α).
  """
  from tqdm.auto import tqdm
  total = datasets.count_images(config, split)
  n = total if num_images is None else min(int(num_images), total)
  if n < 1:
    raise datasets.DatasetError(f'write_mask_statistics: num_images must be >= 1, got {num_images}.')
  batches = datasets.iterate_images(config, split, num_images=n, batch_size=batch_size,
                                    seed=None if n == total else config.seed)
  with tqdm(total=n, unit='img', desc='mask statistics', disable=not progress) as bar:
    def counted():
      for batch in batches:
        yield batch
        bar.update(len(batch))
    freq_stat, space_stat = preconditioning.compute_statistics(counted())
  stem = f'{dataset_tag(config)}_{config.data.image_size}'
  paths = {f'{kind}_{ext}': os.path.join(out_dir, f'{kind}_{stem}.{ext}')
           for kind in ('freq', 'space') for ext in ('npy', 'png')}
  preconditioning.save_statistics(freq_stat, space_stat, paths['freq_npy'], paths['space_npy'])
  for kind, stat, title, shift in (('freq', freq_stat, 'log(1 + mean |F x|²)', True),
                                   ('space', space_stat, 'mean x²', False)):
    png = plot_statistic(stat, title, shift)
    atomic_write(paths[f'{kind}_png'], lambda f: f.write(png))
  alpha = config.sampling.get('alpha', None)
  alpha = 5. if alpha is None else float(alpha)  # the official α for the condition number shown
  precond = preconditioning.from_statistics(freq_stat, space_stat, alpha)
  return {'freq_path': paths['freq_npy'], 'space_path': paths['space_npy'], 'freq_png': paths['freq_png'],
          'space_png': paths['space_png'], 'num_images': n, 'image_shape': tuple(freq_stat.shape),
          'alpha': alpha, 'condition_number': precond.condition_number()}
