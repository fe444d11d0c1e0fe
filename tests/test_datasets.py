"""Tests for pds_jax.datasets: every source, the batching contract, splits, flips, dequantization, errors."""
import os
import struct
import sys

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from pds_jax import datasets
from pds_jax.datasets import DatasetError


def _config(dataset='natural_patches', image_size=32, num_channels=3, batch_size=16, eval_batch_size=7,
            random_flip=False, centered=False, seed=0, **data_fields):
  config = ml_collections.ConfigDict()
  config.seed = seed
  config.training = ml_collections.ConfigDict({'batch_size': batch_size})
  config.eval = ml_collections.ConfigDict({'batch_size': eval_batch_size})
  config.data = ml_collections.ConfigDict(dict(dataset=dataset, image_size=image_size, num_channels=num_channels,
                                                random_flip=random_flip, centered=centered, **data_fields))
  return config


def _take(ds, n_batches):
  it = iter(ds)
  return [next(it) for _ in range(n_batches)]


def _ramp_npz(tmp_path, n=30, size=8):
  """n uint8 RGB images: image i has red = i everywhere and a horizontal ramp in green (flip-asymmetric)."""
  images = np.zeros((n, size, size, 3), np.uint8)
  images[..., 0] = np.arange(n)[:, None, None]
  images[..., 1] = (np.arange(size) * 30)[None, None, :]
  path = str(tmp_path / 'ramp.npy')
  np.save(path, images)
  return path, images


# ----------------------------------------------------------------------------- bundled datasets


def _skimage_photo(name):
  import skimage.data
  import skimage.io
  return skimage.io.imread(os.path.join(os.path.dirname(skimage.data.__file__), name))[..., :3]


@pytest.mark.parametrize('size', [32, 64])
def test_natural_patches_counts_split_and_content(size):
  x_tr, y_tr, x_ev, y_ev = datasets.natural_patch_arrays(size)
  stride = size // 2
  expected = {False: 0, True: 0}
  for name in datasets.NATURAL_PHOTOS:
    h, w, _ = _skimage_photo(name).shape
    for f in (1, 2, 4):
      hs, ws = h // f, w // f
      n = ((hs - size) // stride + 1) * ((ws - size) // stride + 1) if hs >= size and ws >= size else 0
      expected[name == 'chelsea.png'] += n
  assert (len(x_tr), len(x_ev)) == (expected[False], expected[True])
  assert len(x_tr) > (3000 if size == 32 else 1000)
  assert x_tr.shape[1:] == (size, size, 3) and x_tr.dtype == np.uint8
  chelsea = datasets.NATURAL_PHOTOS.index('chelsea.png')
  assert np.all(y_ev == chelsea) and not np.any(y_tr == chelsea)
  # The first patch of the astronaut at scale 2: 2×2 block means of its top-left 2S×2S corner.
  photo = _skimage_photo('astronaut.png').astype(np.float64)
  corner = photo[:2 * size, :2 * size].reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
  n_scale1 = ((512 - size) // stride + 1) ** 2
  np.testing.assert_array_equal(x_tr[0], photo[:size, :size].astype(np.uint8))
  np.testing.assert_array_equal(x_tr[n_scale1], np.round(corner).astype(np.uint8))
  assert datasets.natural_patch_arrays(size)[0] is x_tr  # cached


def test_natural_patches_batches_match_the_arrays_and_grey_is_luminance():
  x_tr = datasets.natural_patch_arrays(32)[0]
  rgb = next(iter(datasets.get_dataset(_config(batch_size=8))[0]))
  grey = next(iter(datasets.get_dataset(_config(num_channels=1, batch_size=8))[0]))
  members = {x.tobytes() for x in x_tr}
  assert all(np.round(im * 255).astype(np.uint8).tobytes() in members for im in rgb['image'])
  assert grey['image'].shape == (8, 32, 32, 1)
  np.testing.assert_allclose(grey['image'][..., 0], rgb['image'] @ np.array([0.2125, 0.7154, 0.0721]), atol=1e-6)


def test_skimage_faces_and_digits():
  faces_tr, faces_ev = datasets.get_dataset(_config('skimage_faces', image_size=25, num_channels=1))
  assert (len(faces_tr.source), len(faces_ev.source)) == (90, 10)
  import skimage.data
  lfw = np.load(os.path.join(os.path.dirname(skimage.data.__file__), 'lfw_subset.npy'))
  eval_images = np.concatenate([b['image'] for b in faces_ev])[..., 0]
  np.testing.assert_allclose(eval_images, lfw[9:100:10], atol=1e-6)  # 25×25 needs no resize
  from sklearn.datasets import load_digits
  digits = load_digits()
  train, evaluate = datasets.get_dataset(_config('digits', image_size=32, num_channels=3))
  labels = np.concatenate([b['label'] for b in evaluate])
  np.testing.assert_array_equal(labels, digits.target[9::10])
  batch = next(iter(evaluate))['image']
  assert batch.shape == (7, 32, 32, 3) and np.all(batch[..., 0] == batch[..., 2])
  assert 0. <= batch.min() and batch.max() <= 1.
  # Upsampling by 4 keeps each 8×8 pixel's value near the centre of its 4×4 block.
  np.testing.assert_allclose(batch[0, 1::4, 1::4, 0][2:6, 2:6], digits.images[9][2:6, 2:6] / 16., atol=0.25)


# ----------------------------------------------------------------------------- batching contract


def test_train_stream_is_endless_shuffled_deterministic_and_covers_each_epoch(tmp_path):
  path, images = _ramp_npz(tmp_path)
  train, _ = datasets.get_dataset(_config('npy', image_size=8, batch_size=8, path=path))
  batches = _take(train, 12)  # 96 images > 3 epochs of 27 train images
  assert all(b['image'].shape == (8, 8, 8, 3) and b['image'].dtype == np.float32 for b in batches)
  assert all(b['label'].shape == (8,) and b['label'].dtype == np.int32 for b in batches)
  ids = np.round(np.concatenate([b['image'][:, 0, 0, 0] for b in batches]) * 255).astype(int)
  train_ids = [i for i in range(30) if i % 10 != 9]
  for epoch in range(3):
    assert sorted(ids[27 * epoch:27 * (epoch + 1)]) == train_ids
  assert list(ids[:27]) != train_ids and list(ids[:27]) != list(ids[27:54])  # shuffled, fresh each epoch
  again = _take(train, 12)
  assert all(np.array_equal(a['image'], b['image']) for a, b in zip(batches, again))
  other = _take(datasets.get_dataset(_config('npy', image_size=8, batch_size=8, path=path, seed=1))[0], 1)
  assert not np.array_equal(other[0]['image'], batches[0]['image'])


def test_eval_is_one_ordered_pass_with_a_short_last_batch(tmp_path):
  path, images = _ramp_npz(tmp_path, n=50)
  _, evaluate = datasets.get_dataset(_config('npy', image_size=8, eval_batch_size=2, random_flip=True, path=path))
  passes = [list(evaluate), list(evaluate)]
  assert [len(b['image']) for b in passes[0]] == [2, 2, 1] and len(evaluate) == 3
  got = np.concatenate([b['image'] for b in passes[0]])
  np.testing.assert_array_equal(got, images[9::10] / np.float32(255.))  # order kept, never flipped
  assert all(np.array_equal(a['image'], b['image']) for a, b in zip(*passes))


def test_random_flip_flips_some_images_horizontally(tmp_path):
  path, images = _ramp_npz(tmp_path)
  plain = np.concatenate([b['image'] for b in _take(datasets.get_dataset(
      _config('npy', image_size=8, batch_size=9, path=path))[0], 6)])
  flipped = np.concatenate([b['image'] for b in _take(datasets.get_dataset(
      _config('npy', image_size=8, batch_size=9, path=path, random_flip=True))[0], 6)])
  ramp = images[0, 0, :, 1] / np.float32(255.)
  assert np.all(plain[:, 0, :, 1] == ramp)
  is_flipped = np.all(flipped[:, :, :, 1] == ramp[::-1], axis=(1, 2))
  assert np.all(is_flipped | np.all(flipped[:, :, :, 1] == ramp, axis=(1, 2)))
  assert 0.25 < is_flipped.mean() < 0.75


def test_uniform_dequantization_adds_u01_over_256(tmp_path):
  path, images = _ramp_npz(tmp_path)
  config = _config('npy', image_size=8, batch_size=27, path=path)
  train, _ = datasets.get_dataset(config, uniform_dequantization=True)
  plain, _ = datasets.get_dataset(config)
  x, xq = next(iter(plain))['image'], next(iter(train))['image']
  u = xq * 256. - x * 255.  # (255 x + u) / 256, u ~ U[0, 1)
  assert u.min() >= -1e-4 and u.max() < 1. + 1e-4
  assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 1. / 12) < 0.01


def test_evaluation_mode_uses_eval_batch_size_and_one_pass(tmp_path):
  path, _ = _ramp_npz(tmp_path)
  train, _ = datasets.get_dataset(_config('npy', image_size=8, eval_batch_size=10, random_flip=True, path=path),
                                  evaluation=True)
  batches = list(train)
  assert [len(b['image']) for b in batches] == [10, 10, 7]
  ids = np.round(np.concatenate([b['image'][:, 0, 0, 0] for b in batches]) * 255).astype(int)
  assert list(ids) == [i for i in range(30) if i % 10 != 9]


def test_iterate_images_and_count_images():
  config = _config('skimage_faces', image_size=16, num_channels=1)
  assert [datasets.count_images(config, s) for s in ('train', 'eval', 'all')] == [90, 10, 100]
  batches = list(datasets.iterate_images(config, 'all', num_images=95, batch_size=40))
  assert [len(b) for b in batches] == [40, 40, 10, 5]
  subset = [np.concatenate(list(datasets.iterate_images(config, 'all', num_images=30, batch_size=8, seed=s)))
            for s in (3, 3, 4)]
  assert subset[0].shape == (30, 16, 16, 1)
  np.testing.assert_array_equal(subset[0], subset[1])
  first = np.concatenate(list(datasets.iterate_images(config, 'all')))
  rows = [[np.flatnonzero(np.all(first == im, axis=(1, 2, 3)))[0] for im in sub] for sub in subset[::2]]
  assert rows[0] != rows[1] and all(r == sorted(set(r)) for r in rows) and max(rows[0]) >= 90  # spans eval too
  with pytest.raises(DatasetError, match='split'):
    list(datasets.iterate_images(config, 'test'))


@settings(max_examples=30, deadline=None)
@given(centered=st.booleans(), x=st.lists(st.floats(0., 1.), min_size=1, max_size=20))
def test_scaler_round_trip(centered, x):
  config = _config(centered=centered)
  x = np.asarray(x, np.float32)
  scaled = datasets.get_data_scaler(config)(x)
  lo = -1. if centered else 0.
  assert scaled.min() >= lo - 1e-6 and scaled.max() <= 1. + 1e-6
  np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(scaled), x, atol=1e-6)
  if centered:
    np.testing.assert_allclose(scaled, 2. * x - 1., atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(c_in=st.sampled_from([1, 3]), c_out=st.sampled_from([1, 3]), n=st.integers(1, 3), h=st.integers(1, 5))
def test_to_channels_shapes(c_in, c_out, n, h):
  x = np.random.RandomState(0).rand(n, h, h, c_in).astype(np.float32)
  y = datasets.to_channels(x, c_out)
  assert y.shape == (n, h, h, c_out)
  if c_in == 1:  # grey -> RGB -> grey is the identity (the luminance weights sum to 1)
    np.testing.assert_allclose(datasets.to_channels(datasets.to_channels(x, 3), 1), x, atol=1e-6)


# ----------------------------------------------------------------------------- folder


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def test_folder_reads_png_and_jpg_of_any_size(tmp_path):
  root = tmp_path / 'images'
  wide = np.zeros((20, 40, 3), np.uint8)
  wide[:, 10:30] = (200, 100, 50)  # the central 20×20 square is one colour, the sides black
  _save(str(root / 'a' / 'wide.png'), wide)
  _save(str(root / 'b' / 'grey.png'), np.full((9, 9), 77, np.uint8))
  _save(str(root / 'c.jpg'), np.full((50, 30, 3), 128, np.uint8), quality=95)
  rgba = np.zeros((12, 12, 4), np.uint8)
  rgba[..., :3], rgba[..., 3] = 30, 255
  _save(str(root / 'd' / 'e' / 'alpha.PNG'), rgba)
  for i in range(6):
    _save(str(root / f'z{i}.png'), np.full((8, 8, 3), i, np.uint8))
  (root / 'notes.txt').write_text('not an image')
  config = _config('folder', image_size=16, batch_size=4, eval_batch_size=4, path=str(root))
  train, evaluate = datasets.get_dataset(config)
  assert (len(train.source), len(evaluate.source)) == (9, 1)  # 10 files, the 10th (sorted) is eval
  images = np.concatenate(list(datasets.iterate_images(config, 'all')))
  assert images.shape == (10, 16, 16, 3)
  # sorted by relative path: a/wide, b/grey, c.jpg, d/e/alpha, z0..z4 | eval: z5
  np.testing.assert_allclose(images[0], np.broadcast_to(np.array([200, 100, 50]) / 255., (16, 16, 3)), atol=2 / 255)
  np.testing.assert_allclose(images[1], 77 / 255., atol=1 / 255)
  np.testing.assert_allclose(images[2], 128 / 255., atol=3 / 255)
  np.testing.assert_allclose(images[3], 30 / 255., atol=1 / 255)
  np.testing.assert_allclose(images[9], 5 / 255., atol=1 / 255)


def test_folder_errors_name_the_folder_or_file(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  with pytest.raises(DatasetError, match=str(empty) + '.*no image files'):
    datasets.get_dataset(_config('folder', path=str(empty)))
  with pytest.raises(DatasetError, match='not a folder'):
    datasets.get_dataset(_config('folder', path=str(tmp_path / 'missing')))
  with pytest.raises(DatasetError, match='config.data.path'):
    datasets.get_dataset(_config('folder'))
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'broken.png').write_bytes(b'not a png')
  train, evaluate = datasets.get_dataset(_config('folder', path=str(bad)))
  with pytest.raises(DatasetError, match='broken.png'):
    next(iter(train))
  with pytest.raises(DatasetError, match='bad/eval: this split holds no images'):
    next(iter(evaluate))


# ----------------------------------------------------------------------------- npz / npy


def test_npz_npy_layouts_dtypes_and_resizing(tmp_path):
  rs = np.random.RandomState(0)
  nhwc = rs.randint(0, 256, (20, 6, 6, 3)).astype(np.uint8)
  np.save(tmp_path / 'nchw.npy', np.transpose(nhwc, (0, 3, 1, 2)).astype(np.float64) / 255.)
  np.savez(tmp_path / 'multi.npz', labels=np.arange(20), images=nhwc)
  np.save(tmp_path / 'grey.npy', nhwc[..., 0])
  for name, key, channels in (('nchw.npy', None, 3), ('multi.npz', 'images', 3), ('grey.npy', None, 1)):
    config = _config('npz', image_size=6, num_channels=channels, path=str(tmp_path / name), array_key=key)
    got = np.concatenate(list(datasets.iterate_images(config, 'all')))
    order = np.concatenate(datasets.index_split(20))
    want = nhwc[order] if channels == 3 else nhwc[order][..., :1]
    np.testing.assert_allclose(got, want / 255., atol=1e-6)
  config = _config('npz', image_size=12, path=str(tmp_path / 'multi.npz'), array_key='images')
  up = next(datasets.iterate_images(config))
  assert up.shape == (18, 12, 12, 3)
  np.testing.assert_allclose(up * 255, np.round(up * 255), atol=1e-3)  # resized uint8 data stays on 8-bit levels


@pytest.mark.parametrize('array, match', [
    (np.zeros((4, 8), np.uint8), r'expected images of shape \(N, H, W, C\), got shape \(4, 8\)'),
    (np.zeros((4, 3, 3, 3), np.uint8), 'ambiguous'),
    (np.zeros((4, 8, 8, 5), np.uint8), 'no channel axis'),
    (np.full((4, 8, 8, 3), 2., np.float32), r'\[0, 1\]'),
    (np.zeros((4, 8, 8, 3), np.int16), 'dtype int16'),
    (np.zeros((0, 8, 8, 3), np.uint8), 'no images'),
])
def test_array_shape_and_value_errors_name_the_file(tmp_path, array, match):
  path = str(tmp_path / 'bad.npy')
  np.save(path, array)
  with pytest.raises(DatasetError, match=match) as info:
    datasets.get_dataset(_config('npy', image_size=8, path=path))
  assert path in str(info.value)


def test_npz_with_several_arrays_needs_array_key(tmp_path):
  path = str(tmp_path / 'two.npz')
  np.savez(path, a=np.zeros((2, 8, 8, 3), np.uint8), b=np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(DatasetError, match=r"array_key.*got 'c'"):
    datasets.get_dataset(_config('npz', image_size=8, path=path, array_key='c'))
  with pytest.raises(DatasetError, match='not a readable'):
    (tmp_path / 'junk.npy').write_bytes(b'junk')
    datasets.get_dataset(_config('npy', path=str(tmp_path / 'junk.npy')))


# ----------------------------------------------------------------------------- TFDS (optional extra)


def _build_tfds(tfds, data_dir, class_name, version, shape, splits):
  """Prepares an ArrayRecord TFDS dataset named after `class_name` (snake case) with PNG images."""

  def info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=shape), 'label': tfds.features.ClassLabel(num_classes=10)}))

  def split_generators(self, dl_manager):
    return {name: self._generate_examples(images) for name, images in splits.items()}

  def generate_examples(self, images):
    for i, image in enumerate(images):
      yield i, {'image': Image.fromarray(image), 'label': i % 10}

  builder_cls = type(class_name, (tfds.core.GeneratorBasedBuilder,),
                     {'VERSION': tfds.core.Version(version), '_info': info, '_split_generators': split_generators,
                      '_generate_examples': generate_examples, '__module__': __name__},
                     skip_registration=True)
  builder_cls(data_dir=str(data_dir), file_format='array_record').download_and_prepare()


def test_tfds_cifar10_and_celeba_read_offline_with_score_sde_preprocessing(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.delenv('TFDS_DATA_DIR', raising=False)
  rs = np.random.RandomState(0)
  cifar = {'train': [rs.randint(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(12)],
           'test': [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(5)]}
  _build_tfds(tfds, tmp_path, 'Cifar10', '3.0.2', (32, 32, 3), cifar)
  config = _config('CIFAR10', image_size=32, batch_size=12, eval_batch_size=5, tfds_dir=str(tmp_path))
  train, evaluate = datasets.get_dataset(config)
  assert (len(train.source), len(evaluate.source)) == (12, 5)
  batch = next(iter(train))
  members = {im.tobytes() for im in cifar['train']}
  assert all(np.round(im * 255).astype(np.uint8).tobytes() in members for im in batch['image'])
  assert len({im.tobytes() for im in batch['image']}) == 12  # one epoch: every image once
  test_batch = next(iter(evaluate))
  assert sorted(np.round(test_batch['image'][:, 0, 0, 0] * 255).astype(int)) == [0, 40, 80, 120, 160]
  assert sorted(test_batch['label']) == [0, 1, 2, 3, 4]
  small = next(iter(datasets.get_dataset(_config('CIFAR10', image_size=16, eval_batch_size=5,
                                                 tfds_dir=str(tmp_path)))[1]))['image']
  assert small.shape == (5, 16, 16, 3)
  np.testing.assert_allclose(np.sort(small[:, 5, 7, 1]), np.arange(5) * 40 / 255., atol=1e-5)
  # CelebA: score_sde takes the central 140×140 of the 218×178 image, then resizes.
  face = np.zeros((218, 178, 3), np.uint8)
  face[39:179, 19:159] = 255
  _build_tfds(tfds, tmp_path, 'CelebA', '2.1.0', (218, 178, 3), {'train': [face] * 2, 'validation': [face]})
  celeba = next(iter(datasets.get_dataset(_config('CELEBA', image_size=8, tfds_dir=str(tmp_path)))[1]))['image']
  assert celeba.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(celeba, 1., atol=1e-5)


def test_tfds_errors_say_how_to_provide_the_data(tmp_path, monkeypatch):
  pytest.importorskip('tensorflow_datasets')
  monkeypatch.delenv('TFDS_DATA_DIR', raising=False)
  with pytest.raises(DatasetError, match=f'not prepared in {tmp_path}.*tfds build svhn_cropped'):
    datasets.get_dataset(_config('SVHN', tfds_dir=str(tmp_path)))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'env'))
  with pytest.raises(DatasetError, match='tfds build lsun/bedroom'):
    datasets.get_dataset(_config('LSUN', category='bedroom'))
  with pytest.raises(DatasetError, match='config.data.category'):
    datasets.get_dataset(_config('LSUN'))


def test_missing_tfds_extra_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(DatasetError, match='pip install "tensorflow-datasets==4.9.10"'):
    datasets.get_dataset(_config('CIFAR10'))


# ----------------------------------------------------------------------------- FFHQ / CelebA-HQ TFRecords


def test_masked_crc32c_known_value():
  crc = 0xE3069283  # CRC-32C of b'123456789' (the standard check value)
  assert datasets.masked_crc32c(b'123456789') == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _write_tfrecord(path, images_chw):
  from tensorflow_datasets.proto import tf_example_pb2
  with open(path, 'wb') as f:
    for image in images_chw:
      example = tf_example_pb2.Example()
      example.features.feature['shape'].int64_list.value.extend(image.shape)
      example.features.feature['data'].bytes_list.value.append(image.tobytes())
      payload = example.SerializeToString()
      length = struct.pack('<Q', len(payload))
      f.write(length + struct.pack('<I', datasets.masked_crc32c(length)) + payload
              + struct.pack('<I', datasets.masked_crc32c(payload)))


def test_ffhq_tfrecords(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  rs = np.random.RandomState(0)
  images = rs.randint(0, 256, (5, 3, 8, 8)).astype(np.uint8)
  path = str(tmp_path / 'ffhq-r03.tfrecords')
  _write_tfrecord(path, images)
  config = _config('FFHQ', image_size=8, eval_batch_size=5, tfrecords_path=path)
  train, evaluate = datasets.get_dataset(config)
  got = next(iter(evaluate))['image']
  np.testing.assert_allclose(got, np.transpose(images, (0, 2, 3, 1)) / 255., atol=1e-6)
  assert len(train.source) == 5 and datasets.count_images(config, 'all') == 5
  with pytest.raises(DatasetError, match='8×8, config.data.image_size is 16'):
    next(iter(datasets.get_dataset(_config('FFHQ', image_size=16, tfrecords_path=path))[0]))
  with open(path, 'rb') as f:
    data = f.read()
  (tmp_path / 'cut.tfrecords').write_bytes(data[:-10])
  with pytest.raises(DatasetError, match='cut.tfrecords: truncated'):
    datasets.get_dataset(_config('CelebAHQ', image_size=8, tfrecords_path=str(tmp_path / 'cut.tfrecords')))
  (tmp_path / 'junk.tfrecords').write_bytes(b'x' * 40)
  with pytest.raises(DatasetError, match='not a TFRecord file'):
    datasets.get_dataset(_config('FFHQ', image_size=8, tfrecords_path=str(tmp_path / 'junk.tfrecords')))
  with pytest.raises(DatasetError, match='tfrecords_path'):
    datasets.get_dataset(_config('FFHQ', tfrecords_path=str(tmp_path / 'none.tfrecords')))


def test_unknown_dataset_lists_the_choices():
  with pytest.raises(DatasetError, match="'MNIST' is not supported.*natural_patches"):
    datasets.get_dataset(_config('MNIST'))
