"""Image figures of the modes: plain grids, titled columns and titled panels (uint8 RGB arrays)."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np


def image_grid(images: np.ndarray, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
  """Tiles images (N, H, W, C) in [0, 1] into one uint8 (rows·(H+pad), cols·(W+pad), 3) image."""
  n, h, w, c = images.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / nrow))
  grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), np.float32)
  for i, img in enumerate(np.clip(images, 0, 1)):
    r, col = divmod(i, nrow)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = (
        img if c == 3 else np.repeat(img[..., :1], 3, axis=-1))
  return (grid * 255).round().astype(np.uint8)


PANEL_MIN_WIDTH = 360  # titled_panels enlarges narrower images; titled_grid is never narrower


def titled_grid(columns: Sequence[Tuple[str, np.ndarray]], min_size: int = 96, pad: int = 4,
                min_width: int = PANEL_MIN_WIDTH) -> np.ndarray:
  """Images side by side, one titled column per (title, images (N, H, W, C) in [0, 1]), as uint8 RGB.

  Row i holds image i of every column; images are enlarged by an integer factor (nearest) to at
  least `min_size` pixels so that small images stay legible, with the title above each column. The
  columns are centred on a canvas at least `min_width` wide, so that `titled_panels` never enlarges
  a titled grid: grids of 3 and 4 columns (colorize, inpaint) keep one scale and one font.
  """
  from PIL import Image, ImageDraw
  n, h, w = columns[0][1].shape[:3]
  scale = max(1, -(-min_size // max(h, w)))
  cell_h, cell_w = h * scale, w * scale
  font = _font(max(12, min(20, cell_w // 7)))
  title_h = font.getbbox('Ag')[3] + 2 * pad
  used = len(columns) * (cell_w + pad) + pad
  width = max(used, min_width)
  canvas = Image.new('RGB', (width, title_h + n * (cell_h + pad)), 'white')
  draw = ImageDraw.Draw(canvas)
  for j, (title, images) in enumerate(columns):
    left = (width - used) // 2 + pad + j * (cell_w + pad)
    text_w = draw.textlength(title, font=font)
    draw.text((left + max(0, (cell_w - text_w) / 2), pad), title, fill='black', font=font)
    for i, img in enumerate(np.clip(np.asarray(images, np.float32), 0, 1)):
      img = img if img.shape[-1] == 3 else np.repeat(img[..., :1], 3, axis=-1)
      tile = Image.fromarray((img * 255).round().astype(np.uint8)).resize((cell_w, cell_h), Image.NEAREST)
      top = title_h + i * (cell_h + pad)
      canvas.paste(tile, (left, top))
      draw.rectangle((left - 1, top - 1, left + cell_w, top + cell_h), outline=(128, 128, 128))  # white masks too
  return np.asarray(canvas)


def _font(size: int):
  from PIL import ImageFont
  return ImageFont.load_default(size=size)


def titled_panels(panels: Sequence[Tuple[str, np.ndarray]], title: Optional[str] = None,
                  min_width: int = PANEL_MIN_WIDTH, pad: int = 10, font_size: int = 15) -> np.ndarray:
  """Images side by side, each under its own (possibly multi-line) title, as one uint8 RGB array.

  panels: (title, image (H, W, 3) uint8) pairs, e.g. `image_grid` outputs; each image is enlarged by
  an integer factor (nearest) to at least `min_width` pixels wide. `title`: an optional line above all.
  A panel is as wide as its image or its longest title line, whichever is wider, so no text is cut off.
  """
  from PIL import Image, ImageDraw
  font = _font(font_size)
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  text_width = lambda text: max(int(np.ceil(measure.textlength(line, font=font))) for line in text.split('\n'))
  scales = [max(1, -(-min_width // image.shape[1])) for _, image in panels]
  sizes = [(image.shape[1] * k, image.shape[0] * k) for (_, image), k in zip(panels, scales)]
  widths = [max(w, text_width(text)) for (text, _), (w, _) in zip(panels, sizes)]
  line_h = font.getbbox('Ag')[3] + 4
  head_h = max(len(t.split('\n')) for t, _ in panels) * line_h + pad
  top = pad + (line_h + pad if title else 0)
  width = max(sum(widths) + pad * (len(panels) + 1), text_width(title) + 2 * pad if title else 0)
  canvas = Image.new('RGB', (width, top + head_h + max(h for _, h in sizes) + pad), 'white')
  draw = ImageDraw.Draw(canvas)
  if title:
    draw.text((pad, pad), title, fill='black', font=font)
  left = pad
  for (text, image), (w, h), panel_w in zip(panels, sizes, widths):
    for i, line in enumerate(text.split('\n')):
      draw.text((left, top + i * line_h), line, fill='black', font=font)
    canvas.paste(Image.fromarray(np.asarray(image, np.uint8)).resize((w, h), Image.NEAREST), (left, top + head_h))
    left += panel_w + pad
  return np.asarray(canvas)


# ----------------------------------------------------------------------------- captions
# (ASCII: the bundled font has no Greek)


def pds_label(settings: Mapping) -> str:
  """'PDS alpha <α> (<variant>)' or 'no PDS', from a run's settings (`SamplingRun.settings`)."""
  return f'PDS alpha {settings["alpha"]:g} ({settings["pds_variant"]})' if settings['preconditioned'] else 'no PDS'


def sample_caption(settings: Mapping, nfe: float, count: int) -> str:
  """`--mode sample`'s grid.png title lines: method (DPM-Solver's variant, the grid's Langevin nodes), steps, NFE,
  PDS, init, SDE, seed, how many shown."""
  init = settings['init'] + (f' at sigma_T {settings["sigma_t"]:.3g}' if settings.get('sigma_t') is not None else '')
  method = settings.get('dpm_solver_variant', 'dpm_solver') if settings['method'] == 'dpm_solver' else settings['method']
  if settings.get('langevin_nodes'):
    method += f' + Langevin at {settings["langevin_nodes"]} nodes'
  return (f'{method} · {settings["num_steps"]} steps · NFE {nfe:g} · {pds_label(settings)}\n'
          f'init {init} · {settings["sde"]} · seed {settings["seed"]} · {min(count, 64)} of {count} samples')


def headline_metric(metrics: Mapping[str, float]) -> str:
  """The name of a compare run's headline metric: SWD ×10³ for images, the Fréchet distance for the Gaussian
  reference."""
  return 'swd_avg' if 'swd_avg' in metrics else 'frechet_distance'


def metric_line(metrics: Mapping[str, float]) -> str:
  """'<headline metric> <value>' for panel titles."""
  name = headline_metric(metrics)
  return f'{name} {metrics[name]:.4g}'


def compare_panel_title(result: Dict) -> str:
  """Three lines naming a compare run: sampler (and PDS α), steps / NFE / wall time, headline metric."""
  s = result['settings']
  head = f'PDS (alpha {s["alpha"]:g}, {s.get("pds_variant", "official")})' if s['preconditioned'] else 'vanilla'
  return (f'{head}\n{s["num_steps"]} steps · NFE {result["nfe_per_sample"]:g} · '
          f'{result["wall_seconds_incl_compile"]:.1f} s\n{metric_line(result["metrics"])}')
