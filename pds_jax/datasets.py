"""Training and evaluation data, with score_sde's `get_dataset` / `get_data_scaler` interface.

Every source is a random-access set of images (an `ImageSource`); one `ImageDataset` turns it
into batches {'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)} with H = W =
config.data.image_size and C = config.data.num_channels (grey -> RGB repeats the channel,
RGB -> grey is the luminance 0.2125 R + 0.7154 G + 0.0721 B of `skimage.color.rgb2gray`).

Bundled, offline and deterministic sources (config.data.dataset):
  'natural_patches'  the six RGB photos shipped inside scikit-image's package folder
      (skimage/data: astronaut, chelsea, coffee, rocket, motorcycle_left, motorcycle_right; read
      from the files, no fetcher). Each photo is box-averaged by factors 1, 2 and 4 (an exact
      anti-aliasing filter; rounded back to uint8), then cut into image_size × image_size patches
      on a grid of stride image_size // 2, in raster order. Split: every patch of 'chelsea' is
      the eval split, the other five photos are train (overlapping patches never straddle the
      split). Label = index of the photo in `NATURAL_PHOTOS`.
      Patches (train / eval): 32×32: 7010 / 581; 64×64: 1549 / 124.
  'skimage_faces'    the 100 face images (the first half) of skimage's `lfw_subset` (25×25 grey),
      bicubic-resized to image_size; label 0.
  'digits'           scikit-learn's `load_digits` (1797 images, 8×8, values 0..16), bicubic-
      upsampled to image_size; label = the digit.
  For 'skimage_faces', 'digits' and the file sources below the split is by index: image i is
  eval when i % 10 == 9, train otherwise (an eval split needs 10 images or more).
Files (config.data.path):
  'folder'           png / jpg / jpeg / bmp / webp files found recursively, sorted by relative
      path, each centre-cropped to a square and resized with `crop_resize` when read; label 0.
  'npz' / 'npy'      one array (N, H, W, C), (N, H, W) or unambiguous (N, C, H, W), uint8 or float
      in [0, 1]; images not of size image_size are resized like 'folder'. An .npz with several
      arrays names one by config.data.array_key; label 0.
score_sde's datasets (optional extra: tensorflow-datasets with array-record; no TensorFlow):
  'CIFAR10', 'SVHN', 'CELEBA', 'LSUN' (config.data.category) are read from TFDS data prepared in
      the ArrayRecord format under config.data.tfds_dir (else $TFDS_DATA_DIR, else TFDS's default
      ~/tensorflow_datasets), with score_sde's splits and crops / resizes. Nothing is downloaded.
  'FFHQ', 'CelebAHQ' are read from the TFRecord file config.data.tfrecords_path (records with
      'shape' = (C, H, W) and raw uint8 'data', as score_sde); train and eval are both the whole
      file, as in score_sde.

Iteration: the train set is an endless stream of batches drawn from successive seeded
permutations (np.random.default_rng(config.seed)), with random horizontal flips when
config.data.random_flip, and optional uniform dequantization x <- (255 x + u) / 256, u ~ U[0, 1)
(score_sde). Every `iter()` restarts the same stream. The eval set is one ordered pass without
flips; its last batch may be smaller.
"""
from __future__ import annotations

import functools
import os
import struct
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

NATURAL_PHOTOS = ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg', 'motorcycle_left.png',
                  'motorcycle_right.png')
NATURAL_EVAL_PHOTO = 'chelsea.png'
NATURAL_SCALES = (1, 2, 4)
EVAL_EVERY = 10  # index split: image i is eval when i % EVAL_EVERY == EVAL_EVERY - 1
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
BUNDLED = ('natural_patches', 'skimage_faces', 'digits')
TFDS_DATASETS = ('CIFAR10', 'SVHN', 'CELEBA', 'LSUN')
TFRECORD_DATASETS = ('FFHQ', 'CelebAHQ')
TFDS_PACKAGES = '"tensorflow-datasets==4.9.10" "array-record==0.8.6"'
TFDS_EXTRA = f'pip install {TFDS_PACKAGES}'
_LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)

Images = np.ndarray  # float32 (n, H, W, C) in [0, 1]
Labels = np.ndarray  # int32 (n,)


class DatasetError(ValueError):
  """A dataset that cannot be read as configured; the message names the file or config field."""


# ----------------------------------------------------------------------------- scalers


def get_data_scaler(config) -> Callable:
  """Data normaliser: [0, 1] -> [-1, 1] when config.data.centered, else the identity."""
  if config.data.centered:
    return lambda x: x * 2. - 1.
  return lambda x: x


def get_data_inverse_scaler(config) -> Callable:
  """Inverse of `get_data_scaler`: [-1, 1] -> [0, 1] when config.data.centered."""
  if config.data.centered:
    return lambda x: (x + 1.) / 2.
  return lambda x: x


# ----------------------------------------------------------------------------- image operations


def to_channels(images: np.ndarray, num_channels: int) -> np.ndarray:
  """(..., H, W, C) float images with C in {1, 3} converted to `num_channels` in {1, 3}."""
  c = images.shape[-1]
  if c == num_channels:
    return images
  if c == 1 and num_channels == 3:
    return np.repeat(images, 3, axis=-1)
  if c == 3 and num_channels == 1:
    return (images @ _LUMA)[..., None]
  raise DatasetError(f'cannot convert images with {c} channels to config.data.num_channels = {num_channels} '
                     '(supported: 1 and 3).')


def resize(image: np.ndarray, height: int, width: int, method: str = 'bilinear') -> np.ndarray:
  """A float (H, W, C) image resized to (height, width, C) per channel with PIL.

  PIL widens the filter when shrinking, which is the antialiasing of score_sde's
  `tf.image.resize(..., antialias=True)`; `method` is 'bilinear' or 'bicubic'.
  """
  from PIL import Image
  if image.shape[:2] == (height, width):
    return np.asarray(image, np.float32)
  resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[method]
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., k], np.float32), mode='F')
                         .resize((width, height), resample)) for k in range(image.shape[-1])]
  return np.stack(channels, axis=-1)


def central_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size × size crop of an (H, W, C) image (score_sde's `central_crop`)."""
  top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def resize_small(image: np.ndarray, resolution: int) -> np.ndarray:
  """An (H, W, C) image scaled (bilinear) so its shorter side is `resolution` (score_sde's `resize_small`)."""
  h, w = image.shape[:2]
  ratio = resolution / min(h, w)
  return resize(image, int(round(h * ratio)), int(round(w * ratio)))


def crop_resize(image: np.ndarray, resolution: int, quantize: bool = True) -> np.ndarray:
  """Central square crop, then bicubic resize to resolution × resolution (score_sde's `crop_resize`).

  Args:
    image: float (H, W, C) in [0, 1].
    quantize: round back to 8-bit levels, as score_sde's `tf.cast(image, tf.uint8)` (which truncates).
  Returns:
    float32 (resolution, resolution, C) in [0, 1].
  """
  out = np.clip(resize(central_crop(image, min(image.shape[:2])), resolution, resolution, 'bicubic'), 0., 1.)
  if quantize and image.shape[:2] != (resolution, resolution):
    out = np.round(out * 255.) / 255.
  return out.astype(np.float32)


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
  """Mean over factor × factor blocks of an (H, W, C) image (cropped to multiples of factor)."""
  h, w, c = image.shape
  h, w = h // factor * factor, w // factor * factor
  blocks = image[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor, c)
  return blocks.mean(axis=(1, 3))


def extract_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
  """All size × size patches of an (H, W, C) image at top-left corners on a stride grid, raster order."""
  h, w, c = image.shape
  if h < size or w < size:
    return np.zeros((0, size, size, c), image.dtype)
  windows = np.lib.stride_tricks.sliding_window_view(image, (size, size, c))[::stride, ::stride, 0]
  return windows.reshape((-1, size, size, c))


def index_split(n: int) -> Tuple[np.ndarray, np.ndarray]:
  """(train, eval) indices of n items: item i is eval when i % EVAL_EVERY == EVAL_EVERY - 1."""
  idx = np.arange(n)
  is_eval = idx % EVAL_EVERY == EVAL_EVERY - 1
  return idx[~is_eval], idx[is_eval]


def _as_float(image: np.ndarray) -> np.ndarray:
  """uint8 (0..255) or float images as float32 in [0, 1]."""
  return image.astype(np.float32) / 255. if image.dtype == np.uint8 else image.astype(np.float32)


# ----------------------------------------------------------------------------- sources


class ImageSource:
  """A random-access set of images.

  `len(source)` images; `source.read(indices)` returns (images float32 (n, S, S, C) in [0, 1],
  labels int32 (n,)) with S the configured image size and C the source's own channels (1 or 3).
  """
  name: str

  def __len__(self) -> int:
    raise NotImplementedError

  def read(self, indices: np.ndarray) -> Tuple[Images, Labels]:
    raise NotImplementedError


class ArraySource(ImageSource):
  """Images in memory (or memory-mapped): uint8 (0..255) or float in [0, 1], shape (N, H, W, C).

  Images whose size is not `image_size` are resized with `crop_resize` when read.
  """

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], name: str, image_size: Optional[int] = None):
    self.images, self.name, self.image_size = images, name, image_size
    self.labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.images)

  def read(self, indices: np.ndarray) -> Tuple[Images, Labels]:
    x = _as_float(np.asarray(self.images[indices]))
    s = self.image_size
    if s is not None and x.shape[1:3] != (s, s):
      x = np.stack([crop_resize(im, s, quantize=self.images.dtype == np.uint8) for im in x])
    return x, self.labels[indices]

  def subset(self, indices: np.ndarray, name: str) -> 'ArraySource':
    return ArraySource(self.images[indices], self.labels[indices], name, self.image_size)


class FolderSource(ImageSource):
  """Image files read on demand, converted to RGB and passed through `crop_resize`."""

  def __init__(self, files: Sequence[str], image_size: int, name: str):
    self.files, self.image_size, self.name = list(files), image_size, name

  def __len__(self) -> int:
    return len(self.files)

  def _load(self, path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
      with Image.open(path) as im:
        rgb = np.asarray(im.convert('RGB'))
    except (UnidentifiedImageError, OSError, ValueError) as e:
      raise DatasetError(f'{path}: not a readable image ({e}).') from e
    return crop_resize(rgb / 255., self.image_size)

  def read(self, indices: np.ndarray) -> Tuple[Images, Labels]:
    return np.stack([self._load(self.files[i]) for i in indices]), np.zeros(len(indices), np.int32)


class TFDSSource(ImageSource):
  """One split of a TFDS random-access data source, each example preprocessed by `preprocess`.

  `preprocess(uint8 (H, W, C)) -> float32 (S, S, C)`; the label is the example's 'label' or 0.
  """

  def __init__(self, data_source, preprocess: Callable[[np.ndarray], np.ndarray], name: str):
    self.data_source, self.preprocess, self.name = data_source, preprocess, name

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: np.ndarray) -> Tuple[Images, Labels]:
    examples = [self.data_source[int(i)] for i in indices]
    images = np.stack([self.preprocess(np.asarray(ex['image'])) for ex in examples])
    return images, np.array([int(ex.get('label', 0)) for ex in examples], np.int32)


def _crc32c_table() -> Tuple[int, ...]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C (Castagnoli) of `data`, rotated right by 15 plus 0xa282ead8."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_index(path: str) -> np.ndarray:
  """(offset, length) int64 (N, 2) of the payload of every record of a TFRecord file.

  A record is: uint64 length, uint32 masked CRC of the length, payload, uint32 masked CRC of the
  payload (little endian). The length checksums are verified; the payload checksums are not.
  """
  index, size = [], os.path.getsize(path)
  with open(path, 'rb') as f:
    pos = 0
    while pos < size:
      header = f.read(12)
      if len(header) < 12:
        raise DatasetError(f'{path}: truncated TFRecord header at byte {pos}.')
      (length,), (crc,) = struct.unpack('<Q', header[:8]), struct.unpack('<I', header[8:])
      if masked_crc32c(header[:8]) != crc:
        raise DatasetError(f'{path}: not a TFRecord file (bad length checksum at byte {pos}).')
      index.append((pos + 12, length))
      pos += 12 + length + 4
      if pos > size:
        raise DatasetError(f'{path}: truncated TFRecord record at byte {index[-1][0]}.')
      f.seek(pos)
  return np.array(index, np.int64).reshape(-1, 2)


class TFRecordSource(ImageSource):
  """score_sde's FFHQ / CelebA-HQ TFRecords: tf.train.Example{'shape': (C, H, W) int64, 'data': uint8 bytes}.

  Images are used at their stored size, which must be image_size (no resizing, as score_sde).
  """

  def __init__(self, path: str, image_size: int, name: str):
    from tensorflow_datasets.proto import tf_example_pb2
    self.path, self.image_size, self.name = path, image_size, name
    self.index, self._example = tfrecord_index(path), tf_example_pb2.Example

  def __len__(self) -> int:
    return len(self.index)

  def _image(self, f, i: int) -> np.ndarray:
    offset, length = self.index[i]
    f.seek(int(offset))
    features = self._example.FromString(f.read(int(length))).features.feature
    shape = tuple(features['shape'].int64_list.value)
    data = np.frombuffer(features['data'].bytes_list.value[0], np.uint8)
    if len(shape) != 3 or data.size != np.prod(shape):
      raise DatasetError(f'{self.path}: record {i} has shape {shape} and {data.size} bytes; expected (C, H, W) '
                         'and C·H·W bytes of uint8 data.')
    if shape[1:] != (self.image_size, self.image_size):
      raise DatasetError(f'{self.path}: images are {shape[1]}×{shape[2]}, config.data.image_size is '
                         f'{self.image_size}; use the TFRecord file of that resolution.')
    return np.transpose(data.reshape(shape), (1, 2, 0))

  def read(self, indices: np.ndarray) -> Tuple[Images, Labels]:
    with open(self.path, 'rb') as f:
      images = np.stack([self._image(f, int(i)) for i in indices])
    return _as_float(images), np.zeros(len(indices), np.int32)


# ----------------------------------------------------------------------------- bundled datasets


def _read_only(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
  for a in arrays:
    a.setflags(write=False)
  return arrays


def _skimage_data_file(name: str) -> str:
  import skimage.data
  path = os.path.join(os.path.dirname(skimage.data.__file__), name)
  if not os.path.isfile(path):
    raise DatasetError(f'{path}: not found; the bundled datasets read the data files that scikit-image ships '
                       'in its package folder.')
  return path


@functools.lru_cache(maxsize=None)
def natural_patch_arrays(image_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train_images, train_labels, eval_images, eval_labels) of 'natural_patches', uint8 (N, S, S, 3).

  Cached per image size (read-only arrays).
  """
  import skimage.io
  stride = max(image_size // 2, 1)
  parts = {False: ([], []), True: ([], [])}
  for label, name in enumerate(NATURAL_PHOTOS):
    photo = skimage.io.imread(_skimage_data_file(name))[..., :3]
    for factor in NATURAL_SCALES:
      scaled = np.round(box_downsample(photo, factor)).astype(np.uint8)
      patches = extract_patches(scaled, image_size, stride)
      images, labels = parts[name == NATURAL_EVAL_PHOTO]
      images.append(patches)
      labels.append(np.full(len(patches), label, np.int32))
  out = []
  for is_eval in (False, True):
    images, labels = parts[is_eval]
    out += [np.concatenate(images), np.concatenate(labels)]
  return _read_only(*out)


@functools.lru_cache(maxsize=None)
def _resized_arrays(dataset: str, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """(images float32 (N, S, S, 1), labels) of 'skimage_faces' or 'digits', cached."""
  if dataset == 'skimage_faces':
    images = np.load(_skimage_data_file('lfw_subset.npy'))[:100]
    labels = np.zeros(len(images), np.int32)
  else:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, labels = digits.images / 16., digits.target.astype(np.int32)
  resized = np.stack([crop_resize(im[..., None], image_size, quantize=False) for im in images])
  return _read_only(resized, labels)


def _bundled_sources(config) -> Tuple[ImageSource, ImageSource]:
  dataset, size = config.data.dataset, config.data.image_size
  if dataset == 'natural_patches':
    x_tr, y_tr, x_ev, y_ev = natural_patch_arrays(size)
    return ArraySource(x_tr, y_tr, f'{dataset}/train'), ArraySource(x_ev, y_ev, f'{dataset}/eval')
  return _split_by_index(ArraySource(*_resized_arrays(dataset, size), dataset))


def _split_by_index(full: ArraySource) -> Tuple[ArraySource, ArraySource]:
  train_idx, eval_idx = index_split(len(full))
  return full.subset(train_idx, f'{full.name}/train'), full.subset(eval_idx, f'{full.name}/eval')


# ----------------------------------------------------------------------------- file datasets


def _data_path(config) -> str:
  path = config.data.get('path')
  if not path:
    raise DatasetError(f'config.data.dataset = {config.data.dataset!r} reads config.data.path, which is not set.')
  return os.path.expanduser(path)


def image_files(folder: str, what: str = 'config.data.path') -> Sequence[str]:
  """The image files under `folder` (recursively), sorted by relative path; errors name `what`."""
  if not os.path.isdir(folder):
    raise DatasetError(f'{folder}: {what} is not a folder.')
  files = sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, names in os.walk(folder)
                 for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise DatasetError(f'{folder}: no image files ({", ".join(IMAGE_EXTENSIONS)}) found (searched recursively).')
  return [os.path.join(folder, f) for f in files]


def _folder_sources(config) -> Tuple[ImageSource, ImageSource]:
  folder = _data_path(config)
  files = image_files(folder)
  train_idx, eval_idx = index_split(len(files))
  size = config.data.image_size
  return (FolderSource([files[i] for i in train_idx], size, f'{folder}/train'),
          FolderSource([files[i] for i in eval_idx], size, f'{folder}/eval'))


def _to_nhwc(array: np.ndarray, path: str) -> np.ndarray:
  """(N, H, W, C), (N, H, W) or (N, C, H, W) with C in {1, 3} as (N, H, W, C); errors name `path`."""
  if array.ndim == 3:
    return array[..., None]
  if array.ndim != 4:
    raise DatasetError(f'{path}: expected images of shape (N, H, W, C), got shape {array.shape}.')
  last, second = array.shape[3] in (1, 3), array.shape[1] in (1, 3)
  if last and not second:
    return array
  if second and not last:
    return np.transpose(array, (0, 2, 3, 1))
  if last and second:
    raise DatasetError(f'{path}: shape {array.shape} is ambiguous between (N, H, W, C) and (N, C, H, W); store it '
                       'as (N, H, W, C) with H, W > 3.')
  raise DatasetError(f'{path}: shape {array.shape} has no channel axis of size 1 or 3; expected (N, H, W, C).')


def _array_sources(config) -> Tuple[ImageSource, ImageSource]:
  path = _data_path(config)
  if not os.path.isfile(path):
    raise DatasetError(f'{path}: config.data.path is not a file.')
  try:
    loaded = np.load(path, mmap_mode='r', allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DatasetError(f'{path}: not a readable .npy / .npz file ({e}).') from e
  if isinstance(loaded, np.lib.npyio.NpzFile):
    key = config.data.get('array_key') or (loaded.files[0] if len(loaded.files) == 1 else None)
    if key not in loaded.files:
      raise DatasetError(f'{path}: holds arrays {loaded.files}; set config.data.array_key to the one with the '
                         f'images (got {config.data.get("array_key")!r}).')
    loaded = loaded[key]
  images = _to_nhwc(loaded, path)
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise DatasetError(f'{path}: dtype {images.dtype}; expected uint8 (0..255) or float in [0, 1].')
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
      raise DatasetError(f'{path}: float images must lie in [0, 1]; found values in [{lo:.4g}, {hi:.4g}].')
  if len(images) == 0:
    raise DatasetError(f'{path}: holds no images (shape {images.shape}).')
  return _split_by_index(ArraySource(images, None, path, config.data.image_size))


# ----------------------------------------------------------------------------- score_sde datasets


def _import_tfds(dataset: str):
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DatasetError(f'config.data.dataset = {dataset!r} needs the optional TFDS extra: {TFDS_EXTRA}.') from e
  return tfds


def _tfds_spec(config) -> Tuple[str, str, str, Callable[[np.ndarray], np.ndarray]]:
  """(TFDS name, train split, eval split, preprocess) with score_sde's resize ops."""
  dataset, size = config.data.dataset, config.data.image_size
  if dataset in ('CIFAR10', 'SVHN'):
    name = 'cifar10' if dataset == 'CIFAR10' else 'svhn_cropped'
    return name, 'train', 'test', lambda img: resize(_as_float(img), size, size)
  if dataset == 'CELEBA':
    return 'celeb_a', 'train', 'validation', lambda img: resize_small(central_crop(_as_float(img), 140), size)
  category = config.data.get('category')
  if not category:
    raise DatasetError("config.data.dataset = 'LSUN' needs config.data.category (e.g. 'bedroom', 'church_outdoor').")
  if size == 128:
    return f'lsun/{category}', 'train', 'validation', lambda img: central_crop(resize_small(_as_float(img), size), size)
  return f'lsun/{category}', 'train', 'validation', lambda img: crop_resize(_as_float(img), size)


def _tfds_sources(config) -> Tuple[ImageSource, ImageSource]:
  dataset = config.data.dataset
  tfds = _import_tfds(dataset)
  name, train_split, eval_split, preprocess = _tfds_spec(config)
  data_dir = config.data.get('tfds_dir') or os.environ.get('TFDS_DATA_DIR') or None
  data_dir = data_dir and os.path.expanduser(data_dir)
  where = data_dir or '~/tensorflow_datasets'
  build = (f'no download can happen here: on a machine with network run `pip install tensorflow {TFDS_PACKAGES}` '
           f'and `tfds build {name} --data_dir DIR --file_format array_record`, copy DIR here and set '
           'config.data.tfds_dir = DIR (or TFDS_DATA_DIR)')
  try:
    builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(f'config.data.dataset = {dataset!r}: TFDS dataset {name!r} is not prepared in {where}; '
                       f'{build}.') from e
  try:
    splits = builder.as_data_source(split=[train_split, eval_split])
  except (NotImplementedError, ValueError) as e:
    raise DatasetError(f'{builder.data_dir}: TFDS dataset {name!r} is stored as {builder.info.file_format}, which has '
                       'no random access; convert it with `tfds convert_format --dataset_dir '
                       f'{builder.data_dir} --out_file_format array_record` ({e}).') from e
  return tuple(TFDSSource(ds, preprocess, f'{name}/{split}') for ds, split in zip(splits, (train_split, eval_split)))


def _tfrecord_sources(config) -> Tuple[ImageSource, ImageSource]:
  dataset, path = config.data.dataset, config.data.get('tfrecords_path')
  if not path or not os.path.isfile(os.path.expanduser(path)):
    raise DatasetError(f'config.data.dataset = {dataset!r} reads the TFRecord file config.data.tfrecords_path '
                       f'= {path!r}, which does not exist; no download can happen here: make it on a machine with '
                       'the images (e.g. progressive_growing_of_gans dataset_tool.py create_from_images, the '
                       'ffhq-r08.tfrecords file for 256×256) and copy it here.')
  _import_tfds(dataset)
  source = TFRecordSource(os.path.expanduser(path), config.data.image_size, path)
  return source, source


def get_sources(config) -> Tuple[ImageSource, ImageSource]:
  """(train, eval) `ImageSource`s for config.data.dataset."""
  dataset = config.data.dataset
  if dataset in BUNDLED:
    return _bundled_sources(config)
  if dataset == 'folder':
    return _folder_sources(config)
  if dataset in ('npz', 'npy'):
    return _array_sources(config)
  if dataset in TFDS_DATASETS:
    return _tfds_sources(config)
  if dataset in TFRECORD_DATASETS:
    return _tfrecord_sources(config)
  raise DatasetError(f'config.data.dataset = {dataset!r} is not supported; choose one of '
                     f'{list(BUNDLED + ("folder", "npz", "npy") + TFDS_DATASETS + TFRECORD_DATASETS)}.')


# ----------------------------------------------------------------------------- batching


class ImageDataset:
  """Batches of an `ImageSource`: an endless shuffled stream (train) or one ordered pass (eval).

  Each `iter()` starts the same deterministic stream, seeded by `seed`; batches are
  {'image': float32 (B, H, W, num_channels), 'label': int32 (B,)}.
  """

  def __init__(self, source: ImageSource, batch_size: int, num_channels: int, *, shuffle: bool, repeat: bool,
               random_flip: bool = False, uniform_dequantization: bool = False, seed: int = 0):
    if batch_size < 1:
      raise DatasetError(f'batch size must be >= 1, got {batch_size}.')
    self.source, self.batch_size, self.num_channels = source, batch_size, num_channels
    self.shuffle, self.repeat, self.random_flip = shuffle, repeat, random_flip
    self.uniform_dequantization, self.seed = uniform_dequantization, seed

  def __len__(self) -> int:
    """Number of batches in one pass (the last one may be smaller)."""
    return -(-len(self.source) // self.batch_size)

  def _indices(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
    n, b = len(self.source), self.batch_size
    if not self.repeat:
      order = rng.permutation(n) if self.shuffle else np.arange(n)
      for i in range(0, n, b):
        yield order[i:i + b]
      return
    buffer = np.zeros(0, np.int64)
    while True:  # batches may straddle two epochs, so every batch is full
      while len(buffer) < b:
        buffer = np.concatenate([buffer, rng.permutation(n) if self.shuffle else np.arange(n)])
      yield buffer[:b]
      buffer = buffer[b:]

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    if len(self.source) == 0:
      raise DatasetError(f'{self.source.name}: this split holds no images (index splits put image i in eval when '
                         f'i % {EVAL_EVERY} == {EVAL_EVERY - 1}, so an eval split needs {EVAL_EVERY} images or more).')
    rng = np.random.default_rng(self.seed)
    for idx in self._indices(rng):
      images, labels = self.source.read(idx)
      images = to_channels(images, self.num_channels)
      if self.random_flip:
        flip = rng.random(len(idx)) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
      if self.uniform_dequantization:
        images = (rng.random(images.shape, dtype=np.float32) + images * 255.) / 256.
      yield {'image': np.ascontiguousarray(images, np.float32), 'label': labels.astype(np.int32)}


def get_dataset(config, uniform_dequantization: bool = False, evaluation: bool = False
                ) -> Tuple[ImageDataset, ImageDataset]:
  """(train_ds, eval_ds) for config.data.dataset, as score_sde's `datasets.get_dataset`.

  Args:
    config: reads config.seed, config.training.batch_size, config.eval.batch_size,
      config.data.{dataset, image_size, num_channels, random_flip} and the source's own fields
      (path, array_key, tfds_dir, category, tfrecords_path).
    uniform_dequantization: add U[0, 1) / 256 noise to the 8-bit levels (score_sde).
    evaluation: batches of config.eval.batch_size and, as in score_sde, one pass without flips
      for both splits (for likelihood evaluation); otherwise train_ds is endless and shuffled.

  Returns:
    train_ds, eval_ds: iterables of {'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)}.
  """
  batch_size = config.eval.batch_size if evaluation else config.training.batch_size
  train_src, eval_src = get_sources(config)
  common = dict(num_channels=config.data.num_channels, uniform_dequantization=uniform_dequantization,
                seed=config.seed)
  train_ds = ImageDataset(train_src, batch_size, shuffle=not evaluation, repeat=not evaluation,
                          random_flip=bool(config.data.random_flip) and not evaluation, **common)
  eval_ds = ImageDataset(eval_src, config.eval.batch_size, shuffle=False, repeat=False, **common)
  return train_ds, eval_ds


def iterate_images(config, split: str = 'train', num_images: Optional[int] = None, batch_size: int = 256,
                   seed: Optional[int] = None) -> Iterator[np.ndarray]:
  """Float32 (b, H, W, C) batches in [0, 1] of one pass over 'train', 'eval' or 'all' (train then eval).

  At most `num_images` images: the first ones in order, or, when `seed` is given, a uniformly
  random subset drawn with that seed (read in index order). No flips, no dequantization.
  FFHQ / CelebAHQ, whose splits are the same file, count once in 'all'.
  """
  train_src, eval_src = get_sources(config)
  chosen = _split_sources(train_src, eval_src, split)
  total = sum(len(s) for s in chosen)
  n = total if num_images is None else min(int(num_images), total)
  picked = np.arange(n) if seed is None else np.sort(np.random.default_rng(seed).permutation(total)[:n])
  offset = 0
  for source in chosen:
    local = picked[(picked >= offset) & (picked < offset + len(source))] - offset
    offset += len(source)
    for start in range(0, len(local), batch_size):
      yield to_channels(source.read(local[start:start + batch_size])[0], config.data.num_channels)


def _split_sources(train_src: ImageSource, eval_src: ImageSource, split: str) -> Sequence[ImageSource]:
  both = [train_src] if eval_src is train_src else [train_src, eval_src]
  sources = {'train': [train_src], 'eval': [eval_src], 'all': both}
  if split not in sources:
    raise DatasetError(f'split must be one of {sorted(sources)}, got {split!r}.')
  return sources[split]


def count_images(config, split: str = 'train') -> int:
  """Number of images in a split ('train', 'eval' or 'all') of config.data.dataset."""
  return sum(len(s) for s in _split_sources(*get_sources(config), split))
