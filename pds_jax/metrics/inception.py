"""The FID Inception-v3 network (pytorch-fid's variant of TF's inception-2015-12-05) in Flax.

Architecture: torchvision's Inception3 with pytorch-fid's FID patches — Mixed_5b…5d (FIDInceptionA),
Mixed_6b…6e (FIDInceptionC) and Mixed_7b (FIDInceptionE_1) average-pool their pool branch without
counting the zero padding (TF's behaviour); Mixed_7c (FIDInceptionE_2) max-pools it. Every
BasicConv2d is conv (no bias) → BatchNorm (ε = 1e-3, running statistics) → ReLU. Outputs:
  pool   (N, 2048)  the global average of Mixed_7c ("pool3", the FID/KID features);
  logits (N, 1008)  fc(pool), TF's 1008-class classifier, whose softmax is the IS's p(y|x).
Input: NHWC images in [0, 1], resized bilinearly (half-pixel centres, no antialiasing, i.e.
torch's F.interpolate(align_corners=False)) to 299 × 299 and mapped to [−1, 1], as pytorch-fid's
InceptionV3(resize_input=True, normalize_input=True). One-channel images are repeated to RGB.

Weights: the pytorch-fid state dict `pt_inception-2015-12-05-6726825d.pth` (a torch pickle, read
with torch) or a `.npz` holding the same names and arrays. Submodules carry the torch names, so
'Mixed_6b.branch7x7_2.conv.weight' (O, I, kh, kw) is params['Mixed_6b']['branch7x7_2']['conv']
['kernel'] (kh, kw, I, O); bn.weight/bias → bn scale/bias; bn.running_mean/var → batch_stats
bn mean/var; fc.weight (1008, 2048) → fc kernel (2048, 1008). `num_batches_tracked` is ignored.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Mapping, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import parallel

FID_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048
BN_EPSILON = 1e-3

IntPair = Union[int, Tuple[int, int]]


class InceptionWeightsError(ValueError):
  """Missing, unreadable or mismatching Inception weights; the message names the file or key."""


def _pair(v: IntPair) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """conv (no bias, torch-style symmetric padding) → BatchNorm(ε = 1e-3, running stats) → ReLU."""
  features: int
  kernel_size: IntPair
  stride: int = 1
  padding: IntPair = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, _pair(self.kernel_size), (self.stride, self.stride),
                padding=[(p, p) for p in _pair(self.padding)], use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name='bn')(x)
    return nn.relu(x)


def _tf_avg_pool(x: jax.Array) -> jax.Array:
  """3×3, stride 1, padding 1 average that ignores the padding (the FID patch of A, C and E_1)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2))


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, 1, name='branch1x1')(x)
    b5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, 1, name='branch_pool')(_tf_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_stride2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, 1, name='branch_pool')(_tf_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_stride2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool 'avg', padding not counted) or FIDInceptionE_2 (pool 'max')."""
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    pooled = (_tf_avg_pool(x) if self.pool == 'avg'
              else nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1))))
    bp = BasicConv2d(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """x (N, H, W, 3) in [−1, 1] (H, W ≥ 75; 299 for FID) -> (pool (N, 2048), logits (N, 1008))."""

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x = BasicConv2d(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_stride2(x)
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_stride2(x)
    x = FIDInceptionA(32, name='Mixed_5b')(x)
    x = FIDInceptionA(64, name='Mixed_5c')(x)
    x = FIDInceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = FIDInceptionC(c7, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE('avg', name='Mixed_7b')(x)
    x = FIDInceptionE('max', name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    return pool, nn.Dense(NUM_CLASSES, name='fc')(pool)


# ----------------------------------------------------------------------------- weights

# (collection, flax leaf name) -> torch state-dict suffix
_TORCH_SUFFIX = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
                 ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def _flax_to_torch(array_shape: Sequence[int], leaf: str) -> Tuple[int, ...]:
  """Shape of the torch tensor stored for a flax leaf: conv HWIO -> OIHW, dense (in, out) -> (out, in)."""
  if leaf == 'kernel':
    order = (1, 0) if len(array_shape) == 2 else (3, 2, 0, 1)
    return tuple(int(array_shape[i]) for i in order)
  return tuple(array_shape)


def _torch_to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel':
    return array.T if array.ndim == 2 else array.transpose(2, 3, 1, 0)
  return array


@functools.lru_cache(maxsize=1)
def _template() -> Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]:
  """{torch name: (flax path (collection, module…, leaf), flax shape)} of FIDInceptionV3."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
  table = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    keys = tuple(p.key for p in path)
    name = '.'.join(keys[1:-1] + (_TORCH_SUFFIX[(keys[0], keys[-1])],))
    table[name] = (keys, tuple(leaf.shape))
  return table


def state_dict_shapes() -> Dict[str, Tuple[int, ...]]:
  """The torch state-dict names and shapes the loader expects (num_batches_tracked aside)."""
  return {name: _flax_to_torch(shape, path[-1]) for name, (path, shape) in _template().items()}


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], source: str = 'state dict') -> Dict:
  """Flax variables {'params', 'batch_stats'} from a pytorch-fid state dict; checks every name and shape."""
  table = _template()
  unexpected = sorted(k for k in state_dict if k not in table and not k.endswith('num_batches_tracked'))
  missing = sorted(k for k in table if k not in state_dict)
  if missing or unexpected:
    raise InceptionWeightsError(
        f'{source} is not the FID Inception state dict ({FID_WEIGHTS_FILE}): missing keys {missing[:5]}'
        f'{" …" if len(missing) > 5 else ""} ({len(missing)} in all), unexpected keys {unexpected[:5]}'
        f'{" …" if len(unexpected) > 5 else ""} ({len(unexpected)} in all).')
  variables: Dict = {}
  for name, (path, shape) in table.items():
    array = np.asarray(state_dict[name], np.float32)
    want = _flax_to_torch(shape, path[-1])
    if array.shape != want:
      raise InceptionWeightsError(f'{source}: {name} has shape {array.shape}, expected {want}.')
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(_torch_to_flax(array, path[-1]))
  return variables


def weights_help() -> str:
  """Where the FID Inception weights come from and how to pass them (part of every missing-weights error)."""
  return (f'FID, KID-Inception and IS need pytorch-fid\'s FID Inception weights, the file {FID_WEIGHTS_FILE} '
          f'(published with the pytorch-fid project, mseitzer/pytorch-fid, release "fid_weights"; pytorch-fid '
          f'downloads it to the torch hub cache, ~/.cache/torch/hub/checkpoints/). Copy it to this machine and set '
          f'--config.eval.inception_path=/path/to/{FID_WEIGHTS_FILE} (a .npz of the same state dict, '
          f'np.savez(path, **{{k: v.numpy() for k, v in sd.items()}}), works without torch)')


def _missing_weights_message(path: str) -> str:
  return (f'Inception weights not found at {path!r}. {weights_help()}; leave config.eval.inception_path unset '
          f'to skip the Inception metrics.')


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a pytorch-fid state dict from a torch `.pth` (needs torch) or a `.npz` of the same arrays."""
  if not os.path.isfile(path):
    raise InceptionWeightsError(_missing_weights_message(path))
  if path.endswith('.npz'):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InceptionWeightsError(f'reading {path} needs torch (the project\'s optional "torch" extra); '
                                f'or convert it once to a .npz of the same state dict.') from e
  try:
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for a corrupt or non-torch file
    raise InceptionWeightsError(f'{path} is not a readable torch state dict: {e}') from e
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


@functools.lru_cache(maxsize=2)
def load_inception(path: str) -> Dict:
  """The Flax variables of the FID Inception from `path` (cached per path)."""
  return variables_from_state_dict(load_state_dict(path), source=path)


def preprocess(images: jax.Array) -> jax.Array:
  """(N, H, W, C ∈ {1, 3}) in [0, 1] -> (N, 299, 299, 3) in [−1, 1], as pytorch-fid's InceptionV3."""
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  resized = jax.image.resize(images, (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3), 'bilinear', antialias=False)
  return 2. * resized - 1.


@jax.jit
def _forward(variables: Dict, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  return FIDInceptionV3().apply(variables, preprocess(images))


def inception_outputs(images: np.ndarray, variables: Dict, batch_size: int = 50) -> Tuple[np.ndarray, np.ndarray]:
  """pool (N, 2048) and logits (N, 1008), float32, of images (N, H, W, C ∈ {1, 3}) in [0, 1].

  Runs in batches of `batch_size` (the last one zero-padded, so one shape is compiled). With several
  local devices (one per CPU core, `pds_jax.parallel.use_cpu_cores`) the batch is rounded up to a
  multiple of their count and split over them, so each device runs a slice of it.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'the Inception network needs images (N, H, W, 1 or 3); got shape {images.shape}.')
  devices = jax.local_device_count()
  batch_size = -(-min(batch_size, len(images)) // devices) * devices
  sharding = parallel.batch_sharding() if devices > 1 else None
  pools, logits = [], []
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size], np.float32)
    count = len(batch)
    batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], np.float32)])
    pool, logit = _forward(variables, jnp.asarray(batch) if sharding is None else jax.device_put(batch, sharding))
    pools.append(np.asarray(pool)[:count])
    logits.append(np.asarray(logit)[:count])
  return np.concatenate(pools), np.concatenate(logits)
