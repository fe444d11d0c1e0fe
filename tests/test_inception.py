"""Tests for pds_jax.metrics.inception against a torch FID Inception built here from random weights.

The torch model below is written from pytorch-fid's `fid_inception_v3` (torchvision's Inception3 with
num_classes=1008, aux_logits=False and the FIDInceptionA/C/E_1/E_2 blocks); its state_dict() is
the names/shapes table of pt_inception-2015-12-05-6726825d.pth.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT
from pds_jax.metrics import inception

torch = pytest.importorskip('torch')
nn, F = torch.nn, torch.nn.functional


class TorchBasicConv2d(nn.Module):
  def __init__(self, cin, cout, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _tf_avg(x):
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class TorchA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TorchBasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = TorchBasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = TorchBasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = TorchBasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = TorchBasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = TorchBasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = TorchBasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      self.branch_pool(_tf_avg(x))], 1)


class TorchB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TorchBasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = TorchBasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = TorchBasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = TorchBasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class TorchC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TorchBasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = TorchBasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = TorchBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = TorchBasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TorchBasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = TorchBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TorchBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TorchBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TorchBasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = TorchBasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f'branch7x7dbl_{i}')(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg(x))], 1)


class TorchD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TorchBasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = TorchBasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = TorchBasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = TorchBasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TorchBasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TorchBasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f'branch7x7x3_{i}')(b7)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class TorchE(nn.Module):
  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = TorchBasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = TorchBasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = TorchBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = TorchBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TorchBasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = TorchBasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = TorchBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TorchBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = TorchBasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg(x)
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                      self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd), self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):
  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TorchBasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = TorchBasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = TorchBasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = TorchBasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = TorchBasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = TorchA(192, 32), TorchA(256, 64), TorchA(288, 64)
    self.Mixed_6a = TorchB(288)
    self.Mixed_6b, self.Mixed_6c = TorchC(768, 128), TorchC(768, 160)
    self.Mixed_6d, self.Mixed_6e = TorchC(768, 160), TorchC(768, 192)
    self.Mixed_7a = TorchD(768)
    self.Mixed_7b, self.Mixed_7c = TorchE(1280, max_pool=False), TorchE(2048, max_pool=True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, images):
    """pytorch-fid's InceptionV3 input path + pool3 + fc: images (N, 3, H, W) in [0, 1]."""
    x = 2 * F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False) - 1
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
      x = getattr(self, f'Mixed_{name}')(x)
    pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return pool, self.fc(pool)


def _random_state_dict(seed=0):
  """The torch model's state dict with He-scaled convs and random BatchNorm statistics."""
  torch.manual_seed(seed)
  model = TorchFIDInception().eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        m.weight.normal_(0., float(np.sqrt(2. / m.weight[0].numel())))
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0., 0.1)
        m.running_mean.normal_(0., 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model, model.state_dict()


@pytest.fixture(scope='module')
def torch_model():
  return _random_state_dict()


def test_names_and_shapes_match_the_pytorch_fid_state_dict(torch_model):
  _, state_dict = torch_model
  want = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  assert inception.state_dict_shapes() == want
  assert len(want) == 472 and len(state_dict) == 472 + 94  # 94 BasicConv2d, each with num_batches_tracked
  # torchvision documents 27,161,264 parameters for inception_v3; minus AuxLogits (3,326,696) plus 8 classes.
  trainable = sum(int(np.prod(s)) for k, s in want.items() if 'running' not in k)
  assert trainable == 27_161_264 - 3_326_696 + 8 * 2048 + 8
  assert want['fc.weight'] == (1008, 2048) and want['Mixed_7c.branch3x3dbl_3b.conv.weight'] == (384, 384, 3, 1)


def test_flax_network_matches_torch_from_pth_and_npz(torch_model, tmp_path):
  model, state_dict = torch_model
  torch.save(state_dict, tmp_path / inception.FID_WEIGHTS_FILE)
  np.savez(tmp_path / 'weights.npz', **{k: v.numpy() for k, v in state_dict.items()})
  images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want_pool, want_logits = (t.numpy() for t in model(torch.from_numpy(images.transpose(0, 3, 1, 2))))
  for path in (tmp_path / inception.FID_WEIGHTS_FILE, tmp_path / 'weights.npz'):
    pool, logits = inception.inception_outputs(images, inception.load_inception(str(path)), batch_size=2)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    for got, want in ((pool, want_pool), (logits, want_logits)):
      rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
      assert rel.max() < 1e-5, rel  # measured 5e-7 … 8e-7


def test_resize_matches_torch_bilinear():
  images = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
  got = np.asarray(inception.preprocess(images))
  want = 2 * F.interpolate(torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299), mode='bilinear',
                           align_corners=False).numpy().transpose(0, 2, 3, 1) - 1
  np.testing.assert_allclose(got, want, atol=2e-6)
  grey = np.asarray(inception.preprocess(images[..., :1]))
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_a_missing_or_misshaped_key_is_named(torch_model):
  _, state_dict = torch_model
  arrays = {k: v.numpy() for k, v in state_dict.items()}
  missing = dict(arrays)
  del missing['Mixed_6c.branch7x7dbl_3.bn.running_var']
  with pytest.raises(inception.InceptionWeightsError, match=r'Mixed_6c\.branch7x7dbl_3\.bn\.running_var'):
    inception.variables_from_state_dict(missing)
  wrong = dict(arrays, **{'Mixed_5b.branch5x5_2.conv.weight': np.zeros((64, 48, 3, 3), np.float32)})
  with pytest.raises(inception.InceptionWeightsError,
                     match=r'Mixed_5b\.branch5x5_2\.conv\.weight has shape \(64, 48, 3, 3\), expected \(64, 48, 5, 5\)'):
    inception.variables_from_state_dict(wrong)
  extra = dict(arrays, **{'AuxLogits.fc.weight': np.zeros((1008, 768), np.float32)})
  with pytest.raises(inception.InceptionWeightsError, match=r'AuxLogits\.fc\.weight'):
    inception.variables_from_state_dict(extra)


def test_absent_weights_say_which_file_and_which_config_field(tmp_path):
  with pytest.raises(inception.InceptionWeightsError,
                     match=r'pt_inception-2015-12-05-6726825d\.pth.*config\.eval\.inception_path'):
    inception.load_state_dict(str(tmp_path / 'nowhere.pth'))
  (tmp_path / 'garbage.pth').write_bytes(b'not a pickle')
  with pytest.raises(inception.InceptionWeightsError, match='garbage.pth'):
    inception.load_state_dict(str(tmp_path / 'garbage.pth'))


@pytest.mark.slow
def test_inception_outputs_split_over_two_cpu_devices_match_one_device(tmp_path):
  """With one CPU device per core the batch is split over the devices (rounded up to a multiple of their
  count): the same features as the single-device forward, to float32 rounding of the convolutions."""
  script = textwrap.dedent('''
      import jax, jax.numpy as jnp, numpy as np
      from pds_jax.metrics import inception
      assert jax.local_device_count() == 2
      images = np.random.default_rng(0).uniform(0, 1, (5, 32, 32, 3)).astype(np.float32)
      variables = inception.FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
      pool, logits = inception.inception_outputs(images, variables, batch_size=3)  # batches of 4: 4 + 1 padded
      ref = [np.asarray(a) for a in inception._forward(variables, jax.device_put(jnp.asarray(images), jax.devices()[0]))]
      np.savez(%r, pool=pool, logits=logits, ref_pool=ref[0], ref_logits=ref[1])
  ''' % str(tmp_path / 'out.npz'))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp_path / 'out.npz') as f:
    assert f['pool'].shape == (5, 2048) and f['logits'].shape == (5, 1008)
    for name in ('pool', 'logits'):
      scale = np.abs(f['ref_' + name]).max()
      np.testing.assert_allclose(f[name], f['ref_' + name], rtol=0, atol=1e-5 * scale, err_msg=name)
