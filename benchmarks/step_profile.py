"""Per-step speed of NCSN++ on the CPU, side by side with the official PyTorch code, and where it goes.

Models (score_sde configs, random weights with model.init_scale = 1, VE, continuous):
  deep_nf32_32    configs/ve/cifar10_ncsnpp_deep_continuous.py with nf 32 (6.8 M parameters), 32²
  ffhq_nf16_64    configs/ve/ffhq_ncsnpp_continuous.py at 64² with nf 16, ch_mult (1, 2, 4, 8) (2.8 M)
  deep_nf128_32   configs/ve/cifar10_ncsnpp_deep_continuous.py as it is (107.6 M), 32²

1. forward: the jitted continuous VE score `get_score_fn(...)(x, t)`, per batch size.
2. PC step: `sampling.get_pc_sampler(VESDE(σ_min, σ_max, N), shape, 'reverse_diffusion', 'langevin', ...,
   snr=0.16)` called with N steps (one jitted `lax.scan`), wall time / N; vanilla (no preconditioner) and
   PDS (frequency mask, α 5, from random positive statistics). A step evaluates the score twice.
3. layers: every layer of one forward pass, recorded with `nn.intercept_methods`, timed alone (jitted,
   its own weights) at its shape: 3×3 and 1×1 convs, FIR up/down-sampling (the two resamplings of each
   up/down BigGAN block, the pyramid's FIR layers, the fused FIR conv `Conv2d(up|down)`), GroupNorm (outside
   attention), attention blocks (whole). Reported per type as Σ count × (median ms − the dispatch time of a
   trivial jitted call), and `rest` = forward minus their sum (activations, additions, concatenations, the
   time embedding; negative where layers run faster fused or in cache inside the whole forward).
4. torch (`--score_sde_pytorch DIR`, plus `--pds_pytorch DIR` for the PDS step): the official
   score_sde_pytorch NCSNpp built from the same config (its own initialisation), eval mode, `no_grad`,
   `torch.set_num_threads(--torch_threads)`, OMP_WAIT_POLICY=PASSIVE unless set; forward = its
   `get_score_fn`, vanilla step = its `get_pc_sampler`, PDS step = the official PDS `get_pc_sampler` with the same frequency mask (the official
   code allocates noise with `torch.cuda.FloatTensor`; on a CPU that name is pointed at `torch.FloatTensor`).
   The CUDA extension of `op/` is not built (its loader is stubbed while importing): on a CPU the official
   `upfirdn2d` runs its `upfirdn2d_native`, and NCSN++ does not use the fused activation. The parameter counts
   of both sides must agree. The official code is only imported from DIR, never copied here.
5. dtypes: the shipped model's architecture (configs/default_model.py, random weights) at its eval batch,
   forward and PC steps with `get_score_fn(..., dtype=)` float32 against bfloat16 (config.eval.dtype).

6. one core against all cores (`--cores`, issue 23): the benchmark runs twice as child processes, pinned to
   the first core (`taskset`, torch 1 thread, one JAX device) and on every core (torch one thread per core,
   one JAX host CPU device per core: `--jax_devices auto`, main.py's layout with PDS_JAX_CPU_DEVICES=auto,
   where a batch that divides among the devices runs split under `shard_map`, any other on one device), `--rounds`
   pairs in alternating order; step_profile_cores.json holds each side's speed-up (one core / all cores),
   torch / pds_jax on each setup and the per-image cost against batch 1.

Timing: a warm-up call per setting (compilation), one more for torch (oneDNN primitive caches), then
repetitions alternating all settings of a (model, batch) in rotating order; medians over repetitions, and
torch / JAX ratios within a repetition. The machine's load average is recorded before and after. Besides
the wall time, the process's CPU time of each call is recorded: with both sides pinned to one core
(taskset, --torch_threads 1) it measures the work done, nearly independent of other jobs on the machine.

  python -m benchmarks.step_profile --score_sde_pytorch /tmp/score_sde_pytorch --pds_pytorch /tmp/pds_official
  python -m benchmarks.step_profile --quick        # smoke setting, JAX only (< 1 min)
  taskset -c 1 python -m benchmarks.step_profile ... --torch_threads 1 --jax_devices 1  # both sides on one core
  python -m benchmarks.step_profile --cores --score_sde_pytorch ... --pds_pytorch ... --models deep_nf32_32,ffhq_nf16_64
      --layer_batches '' --shipped_batch 0 --num_steps 2     # one core against all cores (one command)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
import numpy as np

from benchmarks import common
from benchmarks.model_step import alternate, machine_note
from pds_jax import parallel, preconditioning, sampling, sde_lib
from pds_jax.models import layerspp, up_or_down_sampling
from pds_jax.models import utils as mutils

SNR = 0.16
SHIPPED = 'configs.default_model'  # the shipped model of the README, for float32 vs bfloat16
EPS = 1e-5
LAYER_TYPES = ('conv3x3', 'conv1x1', 'fir_resample', 'fir_conv', 'group_norm', 'attention')


@dataclasses.dataclass(frozen=True)
class Model:
  """A benchmarked architecture: a config module, the fields changed in it, and the batch sizes of its PC-step
  timing and per-layer breakdown (unless given on the command line)."""
  config_module: str
  overrides: Tuple[Tuple[str, Any], ...]
  pc_batches: Tuple[int, ...] = (1, 8)
  layer_batches: Tuple[int, ...] = (8,)


_INIT = (('model.init_scale', 1.),)  # zero-init layers would hold ~1e-10 weights (denormal arithmetic)
MODELS = {
    'deep_nf32_32': Model('configs.ve.cifar10_ncsnpp_deep_continuous', _INIT + (('model.nf', 32),)),
    'ffhq_nf16_64': Model('configs.ve.ffhq_ncsnpp_continuous',
                          _INIT + (('data.image_size', 64), ('model.nf', 16), ('model.ch_mult', (1, 2, 4, 8)))),
    'deep_nf128_32': Model('configs.ve.cifar10_ncsnpp_deep_continuous', _INIT, pc_batches=(1,), layer_batches=(1,)),
}
QUICK = Model('configs.ve.cifar10_ncsnpp_continuous',
              _INIT + (('data.image_size', 16), ('model.nf', 8), ('model.num_res_blocks', 1), ('model.ch_mult', (1, 2))),
              pc_batches=(1,), layer_batches=(1,))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true',
                 help='smoke setting: a 16x16 nf 8 NCSN++, forward at batch 1 and 2, PC step at 1, 1 repetition')
  p.add_argument('--models', type=str, default=','.join(MODELS), help=f'comma-separated, of {sorted(MODELS)}')
  p.add_argument('--batches', type=str, default='1,2,4,8', help='batch sizes of the forward timing')
  p.add_argument('--pc_batches', type=str, default=None,
                 help="batch sizes of the PC-step timing (default: the model's; '' for none)")
  p.add_argument('--layer_batches', type=str, default=None,
                 help="batch sizes of the per-layer breakdown (default: the model's; '' for none)")
  p.add_argument('--repeats', type=int, default=3, help='repetitions (interleaved)')
  p.add_argument('--num_steps', type=int, default=5, help='PC steps per sampler call (N)')
  p.add_argument('--alpha', type=float, default=5., help='PDS mask strength')
  p.add_argument('--score_sde_pytorch', type=str, default=None, help='a checkout of yang-song/score_sde_pytorch')
  p.add_argument('--pds_pytorch', type=str, default=None, help='a checkout of the official PDS code (fudan-zvg/PDS)')
  p.add_argument('--torch_threads', type=int, default=2)
  p.add_argument('--jax_devices', type=str, default='1',
                 help="host CPU devices of the JAX side: a count (1: one device, main.py's default) or 'auto' (one "
                      "per core this process may use, as main.py starts with PDS_JAX_CPU_DEVICES=auto; a batch that "
                      "does not divide among them runs on one device); XLA_FLAGS' device count wins")
  p.add_argument('--cores', action='store_true',
                 help='one core against all cores: runs this benchmark twice as child processes, pinned to the first '
                      'core (taskset, --torch_threads 1 --jax_devices 1) and on every core (--torch_threads <cores> '
                      '--jax_devices auto), --rounds times in alternating order, and writes step_profile_cores.json')
  p.add_argument('--rounds', type=int, default=1, help='--cores: one-core / all-cores pairs of child runs')
  p.add_argument('--setups', type=str, default='one_core,all_cores',
                 help='--cores: the setups to run (one_core, all_cores); a missing one leaves its columns empty')
  p.add_argument('--shipped_batch', type=int, default=36,
                 help='batch of the float32 vs bfloat16 timing of the shipped model (its eval batch; 0: skip)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--label', type=str, default='', help='a note stored in the JSON (e.g. the commit measured)')
  p.add_argument('--out_dir', type=str, default=None)
  args = p.parse_args(argv)
  if args.repeats > 60:
    p.error('--repeats: at most 60 (the PC-step keys are drawn before timing)')
  if args.quick:
    args.models, args.batches, args.shipped_batch = 'quick', '1,2', 0  # batch 2: split over 2 devices when there
    args.repeats, args.num_steps = 1, 2
    return args
  unknown = set(args.models.split(',')) - set(MODELS)
  if unknown:
    p.error(f'--models: unknown {sorted(unknown)}; choose from {sorted(MODELS)}')
  if args.pds_pytorch and not args.score_sde_pytorch:
    p.error('--pds_pytorch needs --score_sde_pytorch (the model code)')
  return args


def get_config(model: Model):
  """The config of `model.config_module` with its overrides applied."""
  config = importlib.import_module(model.config_module).get_config()
  for path, value in model.overrides:
    group, field = path.split('.')
    config[group][field] = value
  return config


def _num_params(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------------------- JAX side


class JaxSide:
  """pds_jax's NCSN++ score (computing in `dtype`, config.eval.dtype), forward and PC-step calls for one config.

  With a `mesh` (`parallel.batch_mesh()` over several host CPU devices), a batch that divides among its
  devices runs as the CLI runs it: the forward and the sampler under `jax.shard_map`, one slice per device;
  any other batch runs on one device (the CLI then starts with fewer devices, `parallel.cpu_device_count`).
  """
  has_pds = True
  extra_warmup = False

  def __init__(self, config, seed: int, dtype: str = 'float32', mesh: Optional[jax.sharding.Mesh] = None):
    self.config, self.mesh = config, mesh
    self.sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
    self.model = mutils.get_model(config.model.name)(config=config)
    self.params = jax.jit(lambda rng: mutils.init_model(rng, config)[2])(jax.random.PRNGKey(seed))
    self.score_fn = mutils.get_score_fn(self.sde, self.model, self.params, {}, continuous=True, dtype=dtype)
    self.num_params = _num_params(self.params)
    self._forward = jax.jit(lambda score_fn, x, t: score_fn(x, t))
    if mesh is not None:
      batch = PartitionSpec(mesh.axis_names[0])
      self._forward_split = jax.jit(jax.shard_map(lambda score_fn, x, t: score_fn(x, t), mesh=mesh,
                                                  in_specs=(PartitionSpec(), batch, batch), out_specs=batch))

  def devices(self, batch: int) -> int:
    """The devices a batch of `batch` runs on."""
    return self.mesh.size if self.mesh is not None and self.mesh.size > 1 and batch % self.mesh.size == 0 else 1

  def forward(self, x: np.ndarray, t: np.ndarray) -> Callable[[int], jax.Array]:
    if self.devices(len(x)) > 1:
      split = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names[0]))
      x, t = jax.device_put(x, split), jax.device_put(t, split)
      return lambda rep: self._forward_split(self.score_fn, x, t)
    x, t = jnp.asarray(x), jnp.asarray(t)
    return lambda rep: self._forward(self.score_fn, x, t)

  def pc_step(self, shape, num_steps: int, pre: Optional[preconditioning.Preconditioner],
              seed: int) -> Callable[[int], jax.Array]:
    """The CLI's way: per-sample keys (`sampling.sample_keys`), split over the mesh when the batch divides."""
    sde = sde_lib.VESDE(self.config.model.sigma_min, self.config.model.sigma_max, num_steps)
    split = self.devices(shape[0]) > 1
    sampler = sampling.get_pc_sampler(sde, shape, 'reverse_diffusion', 'langevin', lambda x: x, snr=SNR, eps=EPS,
                                      mesh=self.mesh if split else None)
    place = (lambda keys: jax.device_put(keys, NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names[0])))
             ) if split else (lambda keys: keys)
    keys = {rep: place(sampling.sample_keys(seed + rep + 1, 0, shape[0])) for rep in range(-2, 61)}
    return lambda rep: sampler(keys[rep], self.score_fn, pre)[0]


# ----------------------------------------------------------------------------- torch side


class TorchSide:
  """The official score_sde_pytorch NCSN++ (and PDS sampler) for one config, imported from checkouts."""
  extra_warmup = True  # oneDNN builds its primitives on the first calls

  def __init__(self, config, score_sde_dir: str, pds_dir: Optional[str], threads: int, seed: int):
    # Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads that wait for a
    # busy core make the official model 10-50x slower (measured: 3.1 s instead of 0.15 s per forward).
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    import torch
    import torch.utils.cpp_extension as cpp_extension
    self.torch = torch
    torch.set_num_threads(threads)
    if score_sde_dir not in sys.path:
      sys.path.append(score_sde_dir)
    loader = cpp_extension.load
    cpp_extension.load = lambda *args, **kwargs: None  # op/ builds CUDA kernels at import; unused on a CPU
    try:
      from models import ncsnpp, utils as tutils  # noqa: F401 (registers the model)
      import sde_lib as tsde_lib
      vanilla_sampling = importlib.import_module('sampling')
    finally:
      cpp_extension.load = loader
    self.vanilla_sampling = vanilla_sampling
    self.pds_sampling = None
    if pds_dir:
      spec = importlib.util.spec_from_file_location('pds_official_sampling', os.path.join(pds_dir, 'sampling.py'))
      self.pds_sampling = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(self.pds_sampling)  # its sde_lib / models.utils resolve to score_sde_pytorch's
      torch.cuda.FloatTensor = torch.FloatTensor  # the official PDS code allocates its noise on CUDA by name
    self.has_pds = self.pds_sampling is not None
    torch.manual_seed(seed)
    torch_config = ml_collections.ConfigDict(config.to_dict())  # a copy: the torch model reads config.device
    torch_config.device = 'cpu'
    self.config = torch_config
    self.model = tutils.get_model(config.model.name)(torch_config).eval()
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.sde_lib = tsde_lib
    sde = tsde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
    self.score_fn = tutils.get_score_fn(sde, self.model, train=False, continuous=True)

  def forward(self, x: np.ndarray, t: np.ndarray) -> Callable[[int], Any]:
    torch = self.torch
    x, t = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))), torch.from_numpy(t)

    def call(rep):
      with torch.no_grad():
        return self.score_fn(x, t)
    return call

  def pc_step(self, shape, num_steps: int, pre: Optional[preconditioning.Preconditioner],
              seed: int) -> Callable[[int], Any]:
    torch = self.torch
    sde = self.sde_lib.VESDE(self.config.model.sigma_min, self.config.model.sigma_max, num_steps)
    nchw = (shape[0], shape[3], shape[1], shape[2])
    common_args = dict(sde=sde, shape=nchw, inverse_scaler=lambda x: x, snr=SNR, n_steps=1, probability_flow=False,
                       continuous=True, denoise=True, eps=EPS, device='cpu')
    if pre is None:
      lib = self.vanilla_sampling
      sampler = lib.get_pc_sampler(predictor=lib.ReverseDiffusionPredictor, corrector=lib.LangevinCorrector,
                                   **common_args)
    else:
      lib = self.pds_sampling
      mask = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(pre.freq_mask), (2, 0, 1))[None]))
      sampler = lib.get_pc_sampler(predictor=lib.ReverseDiffusionPredictor, corrector=lib.LangevinCorrector,
                                   space_mask=torch.ones(1), freq_mask=mask, **common_args)

    def call(rep):
      torch.manual_seed(seed + rep + 1)
      return sampler(self.model)[0]
    return call

  def layer_call(self, layer: Layer, seed: int) -> Callable[[int], Any]:
    """The torch counterpart of a recorded layer (official modules for attention and FIR), on NCHW input."""
    torch = self.torch
    from models import layerspp as tlayerspp, up_or_down_sampling as tuds
    torch.manual_seed(seed)
    B, H, W, C = layer.shape
    x, spec = torch.randn(B, C, H, W), layer.spec
    if layer.kind in ('conv3x3', 'conv1x1'):
      module = torch.nn.Conv2d(C, spec['out'], spec['kernel'], stride=spec['stride'], padding=spec['kernel'] // 2)
    elif layer.kind == 'group_norm':
      module = torch.nn.GroupNorm(spec['groups'], C, eps=1e-6)
    elif layer.kind == 'attention':
      module = tlayerspp.AttnBlockpp(C, skip_rescale=spec['skip_rescale'], init_scale=spec['init_scale'])
    elif layer.kind == 'fir_conv':
      module = tuds.Conv2d(C, spec['out'], 3, up=spec['up'], down=not spec['up'], resample_kernel=spec['kernel'])
    elif isinstance(layer.module, nn.Module):  # the pyramid's FIR Upsample / Downsample without conv
      module = (tlayerspp.Upsample if spec['up'] else tlayerspp.Downsample)(C, fir=True, fir_kernel=spec['kernel'])
    else:
      fn = tuds.upsample_2d if spec['up'] else tuds.downsample_2d
      module = lambda x: fn(x, spec['kernel'], factor=2)

    def call(rep):
      with torch.no_grad():
        return module(x)
    return call


# ----------------------------------------------------------------------------- layers


@dataclasses.dataclass
class Layer:
  """One layer type at one input shape (NHWC), how often a forward pass runs it, and what torch needs."""
  kind: str
  what: str
  shape: Tuple[int, ...]
  module: Any  # the recorded flax module, or the FIR function (upsample_2d / downsample_2d)
  spec: Dict[str, Any]
  count: int = 0


def record_layers(jax_side: JaxSide, shape: Tuple[int, ...]) -> List[Layer]:
  """The layers of one forward pass on a batch of `shape`, grouped by (type, description, input shape)."""
  calls: List[Tuple[nn.Module, Tuple[int, ...]]] = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and args and hasattr(args[0], 'shape'):
      calls.append((context.module, tuple(args[0].shape)))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(jax_side.score_fn, jax.ShapeDtypeStruct(shape, jnp.float32),
                   jax.ShapeDtypeStruct(shape[:1], jnp.float32))

  found: Dict[Tuple, Layer] = {}

  def add(kind: str, what: str, x_shape: Tuple[int, ...], module: Any, spec: Dict[str, Any], count: int = 1) -> None:
    key = (kind, what, x_shape)
    found.setdefault(key, Layer(kind, what, x_shape, module, spec)).count += count

  for module, x_shape in calls:
    path = module.scope.path if module.scope is not None else ()
    if any(name.startswith('AttnBlockpp') for name in path[:-1]):
      continue  # its GroupNorm and NINs are timed with the attention block
    channels = x_shape[-1]
    if isinstance(module, nn.Conv):
      kernel, stride = module.kernel_size[0], module.strides[0] if module.strides else 1
      add('conv3x3' if kernel == 3 else 'conv1x1', f'{channels}->{module.features}, stride {stride}', x_shape, module,
          {'out': module.features, 'kernel': kernel, 'stride': stride})
    elif type(module).__name__ == 'GroupNorm':  # flax's or pds_jax's
      add('group_norm', f'{module.num_groups} groups', x_shape, module, {'groups': module.num_groups})
    elif isinstance(module, layerspp.AttnBlockpp):
      add('attention', 'AttnBlockpp', x_shape, module,
          {'skip_rescale': module.skip_rescale, 'init_scale': module.init_scale})
    elif isinstance(module, up_or_down_sampling.Conv2d) and (module.up or module.down):
      add('fir_conv', f'{"up" if module.up else "down"} {channels}->{module.fmaps}', x_shape, module,
          {'out': module.fmaps, 'up': module.up, 'kernel': tuple(module.resample_kernel)})
    elif isinstance(module, layerspp.ResnetBlockBigGANpp) and module.fir and (module.up or module.down):
      fn = up_or_down_sampling.upsample_2d if module.up else up_or_down_sampling.downsample_2d
      add('fir_resample', fn.__name__, x_shape, fn, {'up': module.up, 'kernel': tuple(module.fir_kernel)},
          count=2)  # h and the skip x
    elif isinstance(module, (layerspp.Upsample, layerspp.Downsample)) and module.fir and not module.with_conv:
      add('fir_resample', type(module).__name__, x_shape, module,
          {'up': isinstance(module, layerspp.Upsample), 'kernel': tuple(module.fir_kernel)})
  return list(found.values())


def jax_layer_call(layer: Layer, seed: int) -> Callable[[int], jax.Array]:
  """The layer alone, jitted, on a random input: a fresh copy of the module with its own initial weights."""
  x = jax.random.normal(jax.random.PRNGKey(seed), layer.shape)
  if not isinstance(layer.module, nn.Module):
    call = jax.jit(lambda x: layer.module(x, layer.spec['kernel'], factor=2))
    return lambda rep: call(x)
  module = layer.module.clone(parent=None)
  params = jax.jit(module.init)(jax.random.PRNGKey(seed), x)
  apply = jax.jit(module.apply)
  return lambda rep: apply(params, x)


def time_layers(jax_side: JaxSide, torch_side: Optional[TorchSide], shape: Tuple[int, ...],
                forward_ms: Dict[str, float], repeats: int, seed: int) -> dict:
  """Per layer type and side: Σ count × (median ms alone − the dispatch of a trivial call); `rest` = forward −
  the sum."""
  layers_ = record_layers(jax_side, shape)
  calls = {f'jax_{i}': jax_layer_call(layer, seed) for i, layer in enumerate(layers_)}
  tiny, add_one = jnp.zeros((1,)), jax.jit(lambda x: x + 1)
  calls['jax_dispatch'] = lambda rep: add_one(tiny)
  sides = ['jax']
  if torch_side is not None:
    sides.append('torch')
    calls.update({f'torch_{i}': torch_side.layer_call(layer, seed) for i, layer in enumerate(layers_)})
    tiny_t = torch_side.torch.zeros(1)
    calls['torch_dispatch'] = lambda rep: tiny_t + 1
    for name in [n for n in calls if n.startswith('torch')]:
      calls[name](-2)
  times = alternate(calls, repeats)
  ms = {name: 1e3 * common.median(v['all_s']) for name, v in times.items()}
  rows, by_type = [], {}
  for i, layer in enumerate(layers_):
    row = {'type': layer.kind, 'what': layer.what, 'input_shape': list(layer.shape), 'count': layer.count}
    for side in sides:
      row[f'{side}_ms'] = max(0., ms[f'{side}_{i}'] - ms[f'{side}_dispatch'])
    rows.append(row)
  for side in sides:
    totals = {kind: sum(r['count'] * r[f'{side}_ms'] for r in rows if r['type'] == kind) for kind in LAYER_TYPES}
    totals['rest'] = forward_ms[side] - sum(totals.values())
    by_type[side] = totals
  return {'forward_ms': forward_ms, 'dispatch_ms': {side: ms[f'{side}_dispatch'] for side in sides},
          'ms_by_type': by_type, 'layers': rows}


# ----------------------------------------------------------------------------- run


def _summary(times: Dict[str, dict], name: str, scale: float = 1.) -> dict:
  """Wall ms (median, all) and CPU ms (the process's, all threads: robust to other jobs on a pinned core)."""
  values = [1e3 * s / scale for s in times[name]['all_s']]
  cpu = [1e3 * s / scale for s in times[name]['cpu_all_s']]
  return {'ms_median': common.median(values), 'ms_all': values, 'cpu_ms_median': common.median(cpu),
          'cpu_ms_all': cpu, 'first_call_s': times[name]['first_call_s']}


def _ratio(times: Dict[str, dict], num: str, den: str) -> float:
  return common.median([a / b for a, b in zip(times[num]['all_s'], times[den]['all_s'])])


def measure_batch(sides: Dict[str, Any], shape, pre: preconditioning.Preconditioner, args, with_pc: bool,
                  ratio: Tuple[str, str]) -> dict:
  """forward (and PC steps) of every side at one batch size, all interleaved; ratio[0] / ratio[1] per repetition."""
  rng = np.random.default_rng(args.seed)
  x = rng.uniform(0., 1., shape).astype(np.float32)
  t = np.full((shape[0],), 0.5, np.float32)
  calls = {}
  for name, side in sides.items():
    calls[f'{name}_forward'] = side.forward(x, t)
    if with_pc:
      calls[f'{name}_vanilla'] = side.pc_step(shape, args.num_steps, None, args.seed)
      if side.has_pds:
        calls[f'{name}_pds'] = side.pc_step(shape, args.num_steps, pre, args.seed)
    if side.extra_warmup:
      for call in [c for n, c in calls.items() if n.startswith(f'{name}_')]:
        call(-2)
  times = alternate(calls, args.repeats)
  out = {}
  for name in calls:
    side, what = name.split('_', 1)
    out.setdefault(side, {})[what] = _summary(times, name, 1. if what == 'forward' else args.num_steps)
  num, den = ratio
  if num in sides and den in sides:
    out[f'{num}_over_{den}'] = {what: _ratio(times, f'{num}_{what}', f'{den}_{what}')
                                for what in ('forward', 'vanilla', 'pds') if f'{num}_{what}' in calls}
  return out


def measure_dtypes(args) -> dict:
  """The shipped model's architecture (configs/default_model.py) in float32 and bfloat16, at its eval batch."""
  config = importlib.import_module(SHIPPED).get_config()
  sides = {dtype: JaxSide(config, args.seed, dtype) for dtype in ('float32', 'bfloat16')}
  size, channels = config.data.image_size, config.data.num_channels
  stat = np.random.default_rng(args.seed).uniform(0.1, 1., (size, size, channels)).astype(np.float32)
  shape = (args.shipped_batch, size, size, channels)
  out = measure_batch(sides, shape, preconditioning.from_statistics(stat, None, args.alpha), args, True,
                      ('bfloat16', 'float32'))
  print('shipped model, batch {}: '.format(shape[0]) + ', '.join(
      f'{dtype} {what} {v["ms_median"]:.1f}' for dtype in sides for what, v in out[dtype].items()) + ' ms', flush=True)
  return {'config_module': SHIPPED, 'batch': shape[0], 'num_params': sides['float32'].num_params, **out}


def per_image_ratio(by_batch: Dict[int, dict], side: str, what: str, key: str = 'ms_median') -> Optional[float]:
  """(ms at the largest batch / its size) / (ms at batch 1): the per-image cost of batching."""
  sizes = sorted(b for b in by_batch if what in by_batch[b].get(side, {}))
  if len(sizes) < 2 or sizes[0] != 1:
    return None
  return by_batch[sizes[-1]][side][what][key] / sizes[-1] / by_batch[1][side][what][key]


def per_image_vs_batch(by_batch: Dict[int, dict], side: str, what: str) -> Dict[str, float]:
  """{batch: (ms at batch / batch) / ms at batch 1} for every batch timed."""
  if what not in by_batch.get(1, {}).get(side, {}):
    return {}
  one = by_batch[1][side][what]['ms_median']
  return {str(b): v[side][what]['ms_median'] / b / one for b, v in sorted(by_batch.items()) if what in v.get(side, {})}


def run(args: argparse.Namespace) -> dict:
  load_before = list(os.getloadavg())
  start = time.perf_counter()
  models = {'quick': QUICK} if args.quick else {name: MODELS[name] for name in args.models.split(',')}
  results = []
  for name, model in models.items():
    config = get_config(model)
    jax_side = JaxSide(config, args.seed, mesh=parallel.batch_mesh() if jax.local_device_count() > 1 else None)
    torch_side = None
    if args.score_sde_pytorch:
      torch_side = TorchSide(config, args.score_sde_pytorch, args.pds_pytorch, args.torch_threads, args.seed)
      if torch_side.num_params != jax_side.num_params:
        raise RuntimeError(f'{name}: torch has {torch_side.num_params} parameters, pds_jax {jax_side.num_params}')
    size, channels = config.data.image_size, config.data.num_channels
    stat = np.random.default_rng(args.seed).uniform(0.1, 1., (size, size, channels)).astype(np.float32)
    pre = preconditioning.from_statistics(stat, None, args.alpha)
    pc_batches = model.pc_batches if args.pc_batches is None else common.int_list(args.pc_batches)
    layer_batches = model.layer_batches if args.layer_batches is None else common.int_list(args.layer_batches)
    by_batch = {}
    for batch in sorted(set(common.int_list(args.batches)) | set(pc_batches)):
      shape = (batch, size, size, channels)
      sides = {'jax': jax_side} if torch_side is None else {'jax': jax_side, 'torch': torch_side}
      by_batch[batch] = measure_batch(sides, shape, pre, args, batch in pc_batches, ('torch', 'jax'))
      by_batch[batch]['jax_devices'] = jax_side.devices(batch)
      line = ', '.join(f'{side} {what} {v["ms_median"]:.1f}' for side in ('jax', 'torch')
                       for what, v in by_batch[batch].get(side, {}).items())
      print(f'{name} batch {batch}: {line} ms (load {os.getloadavg()[0]:.1f})', flush=True)
    layers_ = {}
    for batch in layer_batches:
      shape = (batch, size, size, channels)
      forward_ms = {side: v['forward']['ms_median'] for side, v in by_batch.get(batch, {}).items()
                    if side in ('jax', 'torch')}
      layers_[batch] = time_layers(jax_side, torch_side, shape, forward_ms, 2 * args.repeats + 1, args.seed)
      for side, totals in layers_[batch]['ms_by_type'].items():
        print(f'{name} batch {batch} {side} layers: ' + ', '.join(f'{k} {v:.1f}' for k, v in totals.items()) + ' ms',
              flush=True)
    results.append({
        'model': name, 'config_module': model.config_module, 'overrides': [list(o) for o in model.overrides],
        'image_size': size, 'nf': config.model.nf, 'num_params': jax_side.num_params,
        'by_batch': {str(b): v for b, v in by_batch.items()},
        'per_image_8_over_1': {f'{side}_{what}': per_image_ratio(by_batch, side, what)
                               for side in ('jax', 'torch') for what in ('forward', 'vanilla', 'pds')},
        'per_image_vs_batch': {f'{side}_{what}': per_image_vs_batch(by_batch, side, what)
                               for side in ('jax', 'torch') for what in ('forward', 'vanilla', 'pds')},
        'per_image_8_over_1_cpu': {f'{side}_{what}': per_image_ratio(by_batch, side, what, 'cpu_ms_median')
                                   for side in ('jax', 'torch') for what in ('forward', 'vanilla', 'pds')},
        'layers': {str(b): v for b, v in layers_.items()}})
  shipped = measure_dtypes(args) if args.shipped_batch else None
  torch_version = None
  if args.score_sde_pytorch:
    import torch
    torch_version = torch.__version__
  return {
      'benchmark': 'step_profile',
      'label': args.label,
      'setting': {
          'quick': args.quick, 'repeats': args.repeats, 'num_steps_per_call': args.num_steps, 'alpha': args.alpha,
          'snr': SNR, 'eps': EPS, 'torch_threads': args.torch_threads, 'score_sde_pytorch': args.score_sde_pytorch,
          'pds_pytorch': args.pds_pytorch, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'jax_devices': args.jax_devices, 'jax_local_devices': jax.local_device_count(),
          'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
          'weights': f'random: init_model (seed {args.seed}) and the official torch initialisation, init_scale 1',
          'timing': 'warm-up call per setting (+1 for torch), then repetitions alternating all settings of a '
                    '(model, batch) in rotating order; medians over repetitions, ratios within a repetition'},
      'machine': machine_note(load_before),
      'results': results,
      'shipped_dtypes': shipped,
      'environment': {**common.environment(), 'torch': torch_version, 'load_average_before': load_before,
                      'cpu_affinity': sorted(os.sched_getaffinity(0))},
      'total_wall_s': time.perf_counter() - start}


# ----------------------------------------------------------------------------- output


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  results = payload['results']
  fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 7.5), squeeze=False)
  for col, r in enumerate(results):
    ax = axes[0, col]
    for side, color in (('jax', 'C0'), ('torch', 'C1')):
      pts = [(int(b), v[side]['forward']['ms_median'] / int(b)) for b, v in r['by_batch'].items() if side in v]
      if pts:
        ax.plot(*zip(*sorted(pts)), 'o-', color=color, label=f'{side} forward')
      pts = [(int(b), v[side]['vanilla']['ms_median'] / int(b)) for b, v in r['by_batch'].items()
             if 'vanilla' in v.get(side, {})]
      if pts:
        ax.plot(*zip(*sorted(pts)), 's--', color=color, label=f'{side} PC step')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('batch size')
    ax.set_ylabel('ms per image (median)')
    ax.set_title(f'{r["model"]} ({r["num_params"] / 1e6:.1f} M)', fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1, col]
    bars = [(f'{side}\nbatch {b}', totals) for b, lay in r['layers'].items() for side, totals in lay['ms_by_type'].items()]
    for i, (_, totals) in enumerate(bars):
      bottom = 0.
      for j, (kind, ms) in enumerate(totals.items()):
        ax.bar(i, max(ms, 0.), 0.6, bottom=bottom, color=f'C{j}', label=kind if i == 0 else None)
        bottom += max(ms, 0.)
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.set_ylabel('ms per forward (layers timed alone + rest)')
    ax.legend(fontsize=7)
  common.save_figure(fig, path, dpi=110, note=payload['machine'])


def _fmt(v: Optional[float]) -> str:
  return '—' if v is None else f'{v:.1f}'


def _time_table(payload: dict, key: str) -> str:
  rows = []
  for r in payload['results']:
    for batch, v in r['by_batch'].items():
      torch_side, jax_side = v.get('torch', {}), v['jax']
      cells = [r['model'], batch]
      for what in ('forward', 'vanilla', 'pds'):
        cells += [_fmt(torch_side.get(what, {}).get(key)), _fmt(jax_side.get(what, {}).get(key))]
      rows.append(cells)
  return common.markdown_table(['model', 'batch', 'torch fwd', 'jax fwd', 'torch vanilla', 'jax vanilla',
                                'torch PDS', 'jax PDS'], rows)


def report(payload: dict) -> str:
  table, cpu_table = _time_table(payload, 'ms_median'), _time_table(payload, 'cpu_ms_median')
  ratio_rows = [[r['model'], clock] + [None if v is None else round(v, 3) for v in r[field].values()]
                for r in payload['results']
                for clock, field in (('wall', 'per_image_8_over_1'), ('cpu', 'per_image_8_over_1_cpu'))]
  ratios = common.markdown_table(['model', 'clock'] + list(payload['results'][0]['per_image_8_over_1']), ratio_rows)
  layer_rows = [[r['model'], b, side] + [round(v, 1) for v in totals.values()] + [round(lay['forward_ms'][side], 1)]
                for r in payload['results'] for b, lay in r['layers'].items()
                for side, totals in lay['ms_by_type'].items()]
  layer_table = common.markdown_table(['model', 'batch', 'side'] + list(LAYER_TYPES) + ['rest', 'forward'], layer_rows)
  lines = ['wall ms (medians); PC step = ms per step', table, '', 'CPU ms of the process (medians)', cpu_table, '',
           'per-image cost, largest batch / batch 1', ratios, '',
           'forward by layer type (ms)', layer_table, '']
  shipped = payload['shipped_dtypes']
  if shipped:
    dtype_rows = [[dtype] + [round(shipped[dtype][what]['ms_median'], 1) for what in ('forward', 'vanilla', 'pds')]
                  for dtype in ('float32', 'bfloat16')]
    dtype_rows.append(['bf16 / f32'] + [round(shipped['bfloat16_over_float32'][what], 3)
                                        for what in ('forward', 'vanilla', 'pds')])
    lines += [f'shipped model ({shipped["config_module"]}), batch {shipped["batch"]}: ms',
              common.markdown_table(['dtype', 'forward', 'vanilla step', 'PDS step'], dtype_rows), '']
  return '\n'.join(lines + [payload['machine']])


# ----------------------------------------------------------------------------- one core against all cores


def _start_devices(jax_devices: str) -> None:
  """Host CPU devices before JAX's backend starts (as main.py does); the user's XLA_FLAGS count wins."""
  count = len(os.sched_getaffinity(0)) if jax_devices == 'auto' else int(jax_devices)
  if count > 1 and parallel.FORCE_DEVICES_FLAG not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', count)


def run_cores(args: argparse.Namespace, argv: Sequence[str]) -> dict:
  """This benchmark on the first core (taskset, torch 1 thread, one JAX device) and on every core (torch one
  thread per core, one JAX device per core), as child processes, `--rounds` pairs in alternating order."""
  import subprocess
  import tempfile
  cores = sorted(os.sched_getaffinity(0))
  setups = {'one_core': (['taskset', '-c', str(cores[0])], ['--torch_threads', '1', '--jax_devices', '1']),
            'all_cores': ([], ['--torch_threads', str(len(cores)), '--jax_devices', 'auto'])}
  setups = {name: setups[name] for name in args.setups.split(',')}
  child_argv = [a for a in argv if a != '--cores']
  runs: Dict[str, List[dict]] = {name: [] for name in ('one_core', 'all_cores')}
  load_before = list(os.getloadavg())
  start = time.perf_counter()
  for r in range(args.rounds):
    for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
      prefix, extra = setups[name]
      with tempfile.TemporaryDirectory() as out_dir:
        cmd = prefix + [sys.executable, '-m', 'benchmarks.step_profile', *child_argv, *extra, '--out_dir', out_dir,
                        '--label', f'{args.label} {name} round {r}'.strip()]
        print(f'round {r} {name}: {" ".join(cmd)}', flush=True)
        subprocess.run(cmd, check=True, cwd=common.REPO)
        stem = 'step_profile_quick' if args.quick else 'step_profile'
        with open(os.path.join(out_dir, f'{stem}.json')) as f:
          runs[name].append(json.load(f))
  return summarise_cores(runs, {'cores': cores, 'rounds': args.rounds, 'argv': list(child_argv),
                                'setups': {k: ' '.join(p + e) for k, (p, e) in setups.items()},
                                'load_average_before': load_before, 'total_wall_s': time.perf_counter() - start})


def _median_ms(payloads: List[dict], model: str, batch: str, side: str, what: str) -> Optional[float]:
  """The median over rounds of a setting's median ms (None where it was not timed)."""
  values = []
  for payload in payloads:
    r = next(r for r in payload['results'] if r['model'] == model)
    v = r['by_batch'].get(batch, {}).get(side, {}).get(what)
    if v is not None:
      values.append(v['ms_median'])
  return common.median(values) if values else None


def summarise_cores(runs: Dict[str, List[dict]], setting: dict) -> dict:
  """Per (model, batch, side, what): ms on one core and on all cores, the speed-up (one / all), torch / pds_jax on
  all cores, and the per-image cost against batch 1 on each setup."""
  rows = []
  first = (runs['all_cores'] or runs['one_core'])[0]
  for r in first['results']:
    model = r['model']
    for batch in r['by_batch']:
      for what in ('forward', 'vanilla', 'pds'):
        row = {'model': model, 'batch': int(batch), 'what': what,
               'jax_devices': r['by_batch'][batch].get('jax_devices', 1)}
        for side in ('jax', 'torch'):
          one = _median_ms(runs['one_core'], model, batch, side, what) if runs['one_core'] else None
          every = _median_ms(runs['all_cores'], model, batch, side, what) if runs['all_cores'] else None
          base = {name: _median_ms(runs[name], model, '1', side, what) if runs[name] else None for name in runs}
          row[side] = {'one_core_ms': one, 'all_cores_ms': every,
                       'speedup': one / every if one and every else None,
                       'per_image_vs_batch_1': {name: (ms / int(batch) / base[name] if ms and base[name] else None)
                                                for name, ms in (('one_core', one), ('all_cores', every))}}
        if row['jax']['one_core_ms'] is None and row['jax']['all_cores_ms'] is None:
          continue
        for name in ('one_core', 'all_cores'):
          t, j = row['torch'][f'{name}_ms'], row['jax'][f'{name}_ms']
          row[f'torch_over_jax_{name}'] = t / j if t and j else None
        rows.append(row)
  return {'benchmark': 'step_profile_cores', 'label': first['label'], 'setting': setting,
          'machine': first['machine'], 'rows': rows, 'runs': runs,
          'environment': {**common.environment(), 'load_average_after': list(os.getloadavg())}}


def plot_cores(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  models = sorted({row['model'] for row in payload['rows']})
  fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models):
    for side, color in (('jax', 'C0'), ('torch', 'C1')):
      for name, style in (('one_core', 'o--'), ('all_cores', 's-')):
        pts = sorted((row['batch'], row[side]['per_image_vs_batch_1'][name]) for row in payload['rows']
                     if row['model'] == model and row['what'] == 'forward'
                     and row[side]['per_image_vs_batch_1'][name] is not None)
        if pts:
          ax.plot(*zip(*pts), style, color=color, label=f'{"pds_jax" if side == "jax" else "torch"} {name}')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('batch size')
    ax.set_ylabel('forward: per-image cost / batch 1')
    ax.set_title(model, fontsize=10)
    ax.legend(fontsize=7)
  common.save_figure(fig, path, dpi=110, note=payload['machine'])


def report_cores(payload: dict) -> str:
  r2 = lambda v: None if v is None else round(v, 2)
  main_rows, image_rows = [], []
  for row in payload['rows']:
    main_rows.append([row['model'], row['batch'], row['what'], row['jax_devices'],
                      r2(row['torch'].get('one_core_ms')), r2(row['jax']['one_core_ms']),
                      r2(row['torch'].get('all_cores_ms')), r2(row['jax']['all_cores_ms']),
                      r2(row['torch']['speedup']), r2(row['jax']['speedup']),
                      r2(row['torch_over_jax_one_core']), r2(row['torch_over_jax_all_cores'])])
    image_rows.append([row['model'], row['batch'], row['what']] +
                      [r2(row[side]['per_image_vs_batch_1'][name]) for side in ('torch', 'jax')
                       for name in ('one_core', 'all_cores')])
  unit = 'ms per call (forward) or per step (vanilla, PDS), medians'
  return '\n'.join([
      f'one core against all cores ({len(payload["setting"]["cores"])}): {unit}',
      common.markdown_table(['model', 'batch', 'what', 'jax devices', 'torch 1 core', 'pds_jax 1 core',
                             'torch all', 'pds_jax all', 'torch speed-up', 'pds_jax speed-up',
                             'torch/pds_jax 1 core', 'torch/pds_jax all'], main_rows), '',
      'per-image cost / batch 1',
      common.markdown_table(['model', 'batch', 'what', 'torch 1 core', 'torch all', 'pds_jax 1 core', 'pds_jax all'],
                            image_rows), '', payload['machine']])


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  if args.cores:
    payload = run_cores(args, sys.argv[1:] if argv is None else list(argv))
    return common.finish(common.output_paths('step_profile_cores', args.out_dir, args.quick), payload, plot_cores,
                         report_cores)
  _start_devices(args.jax_devices)
  common.use_compilation_cache()
  paths = common.output_paths('step_profile', args.out_dir, args.quick)
  payload = run(args)
  payload['environment']['load_average_after'] = list(os.getloadavg())
  print(f'measured in {payload["total_wall_s"]:.0f} s')
  return common.finish(paths, payload, plot, report)


if __name__ == '__main__':
  main()
