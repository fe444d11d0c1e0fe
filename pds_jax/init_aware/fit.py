"""Fitting q_T ≈ p_T = data * N(0, σ_T² I) from a config: the steps of `--mode fit_init`.

`fit_data` gives seeded training / validation images in the model's range, `choose_sigma_t` picks
σ_T (config.init_aware), `fit_q_t` fits the init of config.sampling.init (a flow by maximum
likelihood on noised data, or a closed form) and `score_init` measures it on held-out noised images
next to the plain N(0, σ_T² I). `store.save_init` then writes it for the samplers.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import datasets, references, sde_lib
from pds_jax.init_aware import flow_training, inits, metrics as ia_metrics, sigma_t as st, store

SIGMA_T_RULES = ('principal', 'dip')


def check_fit_config(config) -> str:
  """Validates config.sampling.init and config.init_aware; returns the kind of q_T to fit
  ('prior' fits `store.FIT_DEFAULT`, the closed-form spectral Gaussian). ValueError naming the field."""
  s, ia = config.sampling, config.init_aware
  kind = store.FIT_DEFAULT if s.init in (store.PRIOR, 'auto') else s.init
  if kind not in store.INITS:
    raise ValueError(f'config.sampling.init = {s.init!r}; choose one of {("auto", store.PRIOR) + store.INITS}.')
  if not 0 < ia.val_fraction < 1:
    raise ValueError(f'config.init_aware.val_fraction = {ia.val_fraction} must lie in (0, 1).')
  if ia.sigma_t_rule not in SIGMA_T_RULES:
    raise ValueError(f'config.init_aware.sigma_t_rule = {ia.sigma_t_rule!r}; choose one of {SIGMA_T_RULES}.')
  return kind


def fit_data(config) -> Tuple[np.ndarray, np.ndarray]:
  """(train, validation) clean images (N, H, W, C) float32 in the model's range (`datasets.get_data_scaler`):
  init_aware.num_images seeded training images (exact draws for the Gaussian reference), the last
  init_aware.val_fraction of them held out."""
  ia = config.init_aware
  if references.is_gaussian_reference(config):
    images = np.asarray(references.gaussian_reference(config).sample(jax.random.PRNGKey(config.seed + 4),
                                                                     ia.num_images))
  else:
    images = np.concatenate(list(datasets.iterate_images(config, 'train', ia.num_images, seed=config.seed)))
  images = np.asarray(datasets.get_data_scaler(config)(images), np.float32)
  num_val = max(1, int(round(ia.val_fraction * len(images))))
  if len(images) - num_val < 2:
    raise ValueError(f'fit_init needs at least 3 training images; the dataset gave {len(images)}.')
  return images[:-num_val], images[-num_val:]


def choose_sigma_t(config, train_x0: np.ndarray) -> Tuple[float, Dict, Optional[str]]:
  """σ_T: config.init_aware.sigma_t when set, else by init_aware.sigma_t_rule.

  'principal' (default; `sigma_t.select_sigma_t_principal`): the smallest σ at which the
  closed-form q_T matches noised training images along their leading principal directions; 'dip':
  the dip-test unimodality onset of Fassina et al. (on images it returns its lower bound).
  Returns (σ_T, info for init.json, a line describing the choice or None). A σ_T outside the VE
  SDE's (sigma_min, sigma_max] is a ValueError.
  """
  ia = config.init_aware
  info, line = {}, None
  if ia.sigma_t is None and ia.sigma_t_rule == 'principal':
    sigma_t, curve = st.select_sigma_t_principal(train_x0, config.seed + 5, num_directions=ia.num_principal_directions,
                                                 tolerance=ia.sigma_t_tolerance, bounds=tuple(ia.sigma_t_bounds))
    info['sigma_t_rule'] = {'rule': 'principal', 'tolerance': ia.sigma_t_tolerance, **curve}
    excess = curve['excess'][curve['sigma'].index(sigma_t)]
    line = (f'sigma_T = {sigma_t:.4g}: from there on the spectral q_T is within {ia.sigma_t_tolerance} (W1 / std, '
            f'beyond the floor; {excess:+.4f} at sigma_T) of the noised images along their '
            f'{ia.num_principal_directions} leading principal directions')
  elif ia.sigma_t is None:
    sigma_t, onsets = st.select_sigma_t(train_x0, jax.random.PRNGKey(config.seed + 5), ia.num_directions,
                                        alpha=ia.dip_alpha / ia.num_directions, bounds=tuple(ia.sigma_t_bounds))
    info['sigma_t_onsets'] = {'num_directions': len(onsets), 'median': float(np.median(onsets)),
                              'max': float(np.max(onsets))}
    line = f'sigma_T = {sigma_t:.4g} (largest unimodality onset over {len(onsets)} random directions)'
  else:
    sigma_t = float(ia.sigma_t)
  sde, _ = sde_lib.get_sde(config)
  if isinstance(sde, sde_lib.VESDE) and not sde.sigma_min < sigma_t <= sde.sigma_max:
    raise ValueError(f'sigma_T = {sigma_t} must lie in (model.sigma_min, model.sigma_max] = '
                     f'({sde.sigma_min}, {sde.sigma_max}].')
  return sigma_t, info, line


def fit_q_t(config, kind: str, train_x0: np.ndarray, val_x0: np.ndarray,
            sigma_t: float) -> Tuple[inits.InitDistribution, Optional[Dict]]:
  """The q_T of `kind` at σ_T fitted on train_x0 (N, H, W, C): (init, training history of a flow or None)."""
  ia = config.init_aware
  shape = references.image_shape(config)
  if kind == 'spectral_gaussian':
    return inits.SpectralGaussianInit.from_images(train_x0, sigma_t), None
  if kind == 'gaussian':
    return inits.IsotropicGaussianInit.create(sigma_t, shape), None
  if kind == 'empirical':
    return inits.EmpiricalInit.create(train_x0, sigma_t), None
  hparams = dict(ia[ia.flow_type].to_dict()) if ia.flow_type in ia else {}
  if ia.flow_type == 'tarflow' and hparams.get('data_scale') is None:
    hparams['data_scale'] = 2. * sigma_t
  module = flow_training.build_flow(ia.flow_type, shape, sigma_t, **hparams)
  return flow_training.fit_flow(module, train_x0, sigma_t, jax.random.PRNGKey(config.seed + 6), epochs=ia.epochs,
                                batch_size=ia.batch_size, regime=ia.regime,
                                optimizer=flow_training.default_optimizer(ia.flow_type, ia.lr), val_data=val_x0)


def score_init(config, kind: str, init: inits.InitDistribution, val_x0: np.ndarray,
               sigma_t: float) -> Dict[str, Dict[str, float]]:
  """Validation NLL per dimension (nats) and sliced W2 to held-out noised images val_x0 + σ_T ξ, of the
  fitted init (under `kind`) and of the plain N(0, σ_T² I) ('gaussian_baseline')."""
  shape = references.image_shape(config)
  num_val = len(val_x0)
  val_noised = jnp.asarray(val_x0) + sigma_t * jax.random.normal(jax.random.PRNGKey(config.seed + 7), val_x0.shape)
  dim = int(np.prod(shape))
  rng = jax.random.PRNGKey(config.seed + 8)
  scores = {}
  for name, q in ((kind, init), ('gaussian_baseline', inits.IsotropicGaussianInit.create(sigma_t, shape))):
    nll = -float(jnp.mean(jax.jit(q.log_prob)(val_noised))) / dim
    draws = q.sample(rng, num_val).reshape(num_val, -1)
    sw = float(ia_metrics.sliced_wasserstein(draws, val_noised.reshape(num_val, -1), rng))
    scores[name] = {'val_nll_per_dim': nll, 'sliced_wasserstein': sw}
  return scores


def beats_baseline(fit_scores: Dict[str, float], baseline_scores: Dict[str, float]) -> Dict[str, bool]:
  """Whether the fitted init is better than N(0, σ_T² I) on each held-out score of `score_init` (lower is better)."""
  return {name: bool(fit_scores[name] < baseline_scores[name]) for name in ('val_nll_per_dim', 'sliced_wasserstein')}


def baseline_verdict(kind: str, fit_scores: Dict[str, float], baseline_scores: Dict[str, float]) -> str:
  """One line saying whether the fit beats N(0, σ_T² I) on held-out NLL and sliced W2, with the differences."""
  if kind == 'gaussian':
    return 'the gaussian init is N(0, sigma_T^2 I) itself: nothing to beat'
  nll = fit_scores['val_nll_per_dim'] - baseline_scores['val_nll_per_dim']
  sw = fit_scores['sliced_wasserstein'] - baseline_scores['sliced_wasserstein']
  wins = beats_baseline(fit_scores, baseline_scores)
  nll_text, sw_text = f'validation NLL ({nll:+.4g} nats/dim)', f'sliced W2 ({sw:+.4g})'
  base = 'the fit {} its baseline N(0, sigma_T^2 I) on '
  if all(wins.values()):
    return base.format('beats') + f'both {nll_text} and {sw_text}'
  if not any(wins.values()):
    return base.format('does NOT beat') + f'either {nll_text} or {sw_text}'
  won, lost = (nll_text, sw_text) if wins['val_nll_per_dim'] else (sw_text, nll_text)
  return base.format('beats') + f'{won} but not on {lost}'
