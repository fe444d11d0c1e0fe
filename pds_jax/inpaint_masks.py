"""Inpainting masks: the built-in ones of config.inpaint.mask and mask files (--mask_path), as (H, W, C) 0/1 arrays.

1 marks a known (observed) pixel, 0 a missing one, as in score_sde's `get_pc_inpainter`.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

BUILTIN_MASKS = ('center_square', 'left_half', 'random_50')


def builtin_mask(name: str, shape: Tuple[int, int, int], seed: int = 0) -> np.ndarray:
  """config.inpaint.mask: 'center_square', 'left_half' or 'random_50' as a float32 (H, W, C) 0/1 mask (1 = known)."""
  h, w, c = shape
  mask = np.ones((h, w), np.float32)
  if name == 'center_square':
    mask[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0.
  elif name == 'left_half':
    mask[:, w // 2:] = 0.
  elif name == 'random_50':
    mask = (np.random.default_rng(seed).random((h, w)) < 0.5).astype(np.float32)
  else:
    raise ValueError(f'config.inpaint.mask = {name!r}; choose one of {BUILTIN_MASKS} or pass --mask_path.')
  return np.repeat(mask[..., None], c, axis=-1)


def load_mask(path: str, shape: Tuple[int, int, int]) -> np.ndarray:
  """An inpainting mask file as a float32 (H, W, C) 0/1 array (1 = known pixel).

  `.npy`: (H, W) or (H, W, C) of 0/1 (bool, integer or float). Image files (`.png`, …): gray or
  RGB, black = missing, white = known (0/255). H, W must be config.data.image_size. Any other
  file is a ValueError naming it and what is wrong.
  """
  h, w, c = shape
  if not os.path.isfile(path):
    raise ValueError(f'{path}: mask file not found.')
  if path.lower().endswith('.npy'):
    try:
      mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f'{path}: not a readable .npy array ({e}).') from e
  else:
    from PIL import Image, UnidentifiedImageError
    try:
      with Image.open(path) as im:
        mask = np.asarray(im.convert('L') if im.mode in ('1', 'L', 'P', 'LA', 'I', 'I;16') else im.convert('RGB'))
    except (UnidentifiedImageError, OSError, ValueError) as e:
      raise ValueError(f'{path}: not a readable image ({e}).') from e
    if mask.dtype == np.uint8 and np.all((mask == 0) | (mask == 255)):
      mask = mask // 255
  if mask.ndim == 3 and mask.shape[2] == 1:
    mask = mask[..., 0]
  if mask.ndim not in (2, 3) or mask.shape[:2] != (h, w) or (mask.ndim == 3 and mask.shape[2] != c):
    raise ValueError(f'{path}: mask of shape {mask.shape}; expected (H, W) = {(h, w)} or (H, W, C) = {(h, w, c)} '
                     '(config.data.image_size and num_channels).')
  if mask.dtype.kind not in 'biuf' or not np.all((mask == 0) | (mask == 1)):
    values = np.unique(mask)[:6] if mask.dtype.kind in 'biuf' else mask.dtype
    raise ValueError(f'{path}: mask values must be 0 (missing) or 1 (known) (or 0 / 255 in an 8-bit image); '
                     f'found {values}.')
  mask = mask.astype(np.float32)
  return np.repeat(mask[..., None], c, axis=-1) if mask.ndim == 2 else mask
