"""Model registry, noise schedules and score functions (score_sde `models/utils.py`).

`get_model_fn` / `get_score_fn` return `jax.tree_util.Partial`s whose pytree leaves are the
parameters and states, so they can be passed to a jitted sampler as traced arguments (the weights
are not baked into the compiled program as constants). Their static part compares equal whenever
the same model and SDE objects and flags are used, so a jitted function re-uses its compilation for
other parameters (e.g. `params_ema` and `optimizer.target`, or another checkpoint).

Inference dtype: `dtype` ('float32', 'bfloat16' or 'float16'; callers pass `config.eval.dtype`)
casts the floating-point parameters and the input images to that dtype for the forward pass and
returns float32 outputs. Noise labels and the Fourier-feature frequencies (`GaussianFourierProjection_*`,
which multiply log σ by up to ~50 and would lose whole radians in bfloat16) stay float32; the time
embedding is computed in float32 and then cast. GroupNorm statistics are computed in float32 (`layers.GroupNorm`).
Measured on the fixtures (nf 8): bfloat16 scores within 0.7-1.6 % (relative, per sample) of float32,
float16 within 0.1-0.2 %; float16's range ends at 65504, so prefer bfloat16 for VE models whose inputs
reach σ_max in the hundreds or thousands.
"""
import functools
from typing import Any, Callable, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.utils import batch_mul, registry_decorator

_MODELS = {}
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
_FLOAT32_PARAMS = 'GaussianFourierProjection'  # module name prefix of parameters kept in float32

Params = Any
DType = Union[str, Any]


register_model = registry_decorator(_MODELS, 'model')
register_model.__doc__ = 'A decorator registering a model class under `name` (default: the class name).'


def get_model(name: str):
  """The model class registered as `name` (`config.model.name`)."""
  if name not in _MODELS:
    raise ValueError(f'config.model.name = {name!r} is not a registered model; choose one of {sorted(_MODELS)}.')
  return _MODELS[name]


def get_sigmas(config) -> jax.Array:
  """The num_scales SMLD noise levels, geometric from sigma_max down to sigma_min (float32)."""
  return jnp.exp(jnp.linspace(jnp.log(config.model.sigma_max), jnp.log(config.model.sigma_min),
                              config.model.num_scales))


def get_ddpm_params(config) -> dict:
  """Betas and alphas of the original DDPM (1000 float64 steps) and the matching VP beta range."""
  num_diffusion_timesteps = 1000
  # parameters need to be adapted if number of time steps differs from 1000
  beta_start = config.model.beta_min / config.model.num_scales
  beta_end = config.model.beta_max / config.model.num_scales
  betas = np.linspace(beta_start, beta_end, num_diffusion_timesteps, dtype=np.float64)
  alphas = 1. - betas
  alphas_cumprod = np.cumprod(alphas, axis=0)
  return {
    'betas': betas,
    'alphas': alphas,
    'alphas_cumprod': alphas_cumprod,
    'sqrt_alphas_cumprod': np.sqrt(alphas_cumprod),
    'sqrt_1m_alphas_cumprod': np.sqrt(1. - alphas_cumprod),
    'beta_min': beta_start * (num_diffusion_timesteps - 1),
    'beta_max': beta_end * (num_diffusion_timesteps - 1),
    'num_diffusion_timesteps': num_diffusion_timesteps
  }


def init_model(rng: jax.Array, config):
  """Initialises the `config.model.name` model on a batch of one zero image.

  Returns:
    (model, init_model_state, initial_params): the flax module, its non-parameter collections
    (empty for score_sde's models) and the parameter tree.
  """
  model = get_model(config.model.name)(config=config)
  input_shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  fake_input = jnp.zeros(input_shape)
  fake_label = jnp.zeros(input_shape[:1], dtype=jnp.int32)
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng}, fake_input, fake_label)
  init_model_state, initial_params = flax.core.pop(variables, 'params')
  return model, init_model_state, initial_params


def _check_dtype(dtype: DType):
  """The jnp dtype of a name in `_DTYPES` (or of a dtype among them)."""
  name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  if name not in _DTYPES:
    raise ValueError(f'Inference dtype (config.eval.dtype) {dtype!r} is not supported; '
                     f'choose one of {sorted(_DTYPES)}.')
  return _DTYPES[name]


def cast_params(params: Params, dtype: DType) -> Params:
  """Casts floating-point parameters to `dtype`, keeping the Fourier-feature frequencies in float32."""
  dtype = _check_dtype(dtype)

  def cast(path, p):
    keep = any(str(getattr(k, 'key', '')).startswith(_FLOAT32_PARAMS) for k in path)
    return p if keep or not jnp.issubdtype(p.dtype, jnp.floating) else p.astype(dtype)

  return jax.tree_util.tree_map_with_path(cast, params)


class _StaticPartial:
  """`functools.partial(fn, **kwargs)`, equal to another one with the same fn and identical (`is`) kwargs.

  Flax modules holding a ConfigDict and SDE objects are not hashable by value; comparing them by
  identity lets `jax.jit` treat two score functions of the same model as the same static structure.
  """

  def __init__(self, fn: Callable, **kwargs):
    self.fn, self.kwargs = fn, kwargs

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **self.kwargs, **kwargs)

  def __eq__(self, other) -> bool:
    return (isinstance(other, _StaticPartial) and self.fn is other.fn and self.kwargs.keys() == other.kwargs.keys()
            and all(v is other.kwargs[k] for k, v in self.kwargs.items()))

  def __hash__(self) -> int:
    return hash((self.fn, tuple((k, id(v)) for k, v in self.kwargs.items())))


def _apply_model(params, states, x, labels, rng=None, *, model, train: bool, dtype):
  """Model output (float32) and new states for images x and noise labels, computing in `dtype`."""
  variables = {'params': params, **states}
  x = x.astype(dtype)
  if not train:
    return model.apply(variables, x, labels, train=False, mutable=False).astype(jnp.float32), states
  out, new_states = model.apply(variables, x, labels, train=True, mutable=list(states.keys()),
                                rngs={'dropout': rng})
  return out.astype(jnp.float32), new_states


def get_model_fn(model, params: Params, states, train: bool = False, dtype: DType = 'float32'):
  """The model as a function `model_fn(x, labels, rng=None) -> (output, new_states)`.

  Args:
    model: a flax module (from `init_model`).
    params, states: its parameters and mutable collections.
    train: dropout on (needs `rng`) and mutable states updated.
    dtype: inference dtype ('float32', 'bfloat16', 'float16'; `config.eval.dtype`). The output is float32.

  Returns:
    A `jax.tree_util.Partial` with leaves (params cast to dtype, states).
  """
  dtype = _check_dtype(dtype)
  fn = _StaticPartial(_apply_model, model=model, train=bool(train), dtype=dtype)
  return jax.tree_util.Partial(fn, cast_params(params, dtype), states)


def _score(params, states, x, t, rng=None, *, sde, model, train, continuous, return_state, dtype):
  """score_sde's score: noise labels and output scaling for VE / VP / subVP, continuous or discrete."""
  model_fn = functools.partial(_apply_model, params, states, model=model, train=train, dtype=dtype)
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):  # t = 0 is the lowest noise level
    if continuous or isinstance(sde, sde_lib.subVPSDE):
      labels = t * 999  # continuously trained models assume time embeddings up to 999
      output, state = model_fn(x, labels, rng)
      std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    else:
      labels = t * (sde.N - 1)
      output, state = model_fn(x, labels, rng)
      std = sde.sqrt_1m_alphas_cumprod[labels.astype(jnp.int32)]
    score = batch_mul(-output, 1. / std)
  elif isinstance(sde, sde_lib.VESDE):
    if continuous:
      labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]  # σ(t)
    else:  # noise-level index; t = 0 is the highest noise level
      labels = sde.T - t
      labels *= sde.N - 1
      labels = jnp.round(labels).astype(jnp.int32)
    score, state = model_fn(x, labels, rng)
  else:
    raise NotImplementedError(f'SDE class {type(sde).__name__} not yet supported.')
  return (score, state) if return_state else score


def get_score_fn(sde: sde_lib.SDE, model, params: Params, states, train: bool = False, continuous: bool = False,
                 return_state: bool = False, dtype: DType = 'float32') -> Callable:
  """The score function `score_fn(x, t, rng=None)` of a score model, as in score_sde.

  Noise labels fed to the model: continuous VE σ(t) (the model divides by it when scale_by_sigma);
  discrete VE / NCSN the index round((T - t)(N - 1)); continuous VP / subVP (and discrete subVP) 999 t,
  score = -output / std(t); discrete VP t (N - 1), score = -output / sqrt(1 - ᾱ) at int(t (N - 1)).

  Args:
    sde: an `sde_lib` SDE (the one the model was trained with).
    model, params, states: the flax module and its variables.
    train: dropout on (pass `rng`) and mutable states updated.
    continuous: the model takes continuous time (`config.training.continuous`).
    return_state: also return the new mutable states.
    dtype: inference dtype (`config.eval.dtype`); the score is float32.

  Returns:
    A `jax.tree_util.Partial` with leaves (params cast to dtype, states); call it as score_fn(x, t)
    with x (B, H, W, C) and t (B,).
  """
  dtype = _check_dtype(dtype)
  fn = _StaticPartial(_score, sde=sde, model=model, train=bool(train), continuous=bool(continuous),
                      return_state=bool(return_state), dtype=dtype)
  return jax.tree_util.Partial(fn, cast_params(params, dtype), states)
