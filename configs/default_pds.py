"""PDS sampling fields shared by every config family (official PDS `main.py` flag defaults)."""
import ml_collections
from ml_collections import config_dict


def add_pds_fields(sampling: ml_collections.ConfigDict) -> None:
  """Adds the preconditioned-sampling fields to `config.sampling` in place.

  speed_up: k of PDS; the sampler runs N = int(model.num_scales / k) steps, eps scaled by k.
  alpha: mask strength α ≥ 1 (METHOD §2): M = α / (m̂ + α - 1); large α is the vanilla sampler.
    None (the default): α(N) = max(5, N / 5, 500 / N²) of the method's N steps (`sampling.pds_alpha`:
    the official 5 where PDS pays, weaker preconditioning as N grows and below 10 steps, so PDS
    does not lose to vanilla at many or very few steps); a number: that α at every N (the official PDS code: 5, as configs/pds/ set).
  freq_mask_path / space_mask_path: official `.npy` statistics of shape (C, H, W); None = identity.
  pds_variant: 'official' (M Mᵀ on the whole reverse drift) or 'marginal_preserving'
    (drift f - ½ g² (I + M Mᵀ) s, noise g M ξ: keeps every marginal p_t for a fixed M).
  num_chunks: the time loop runs as this many jitted `lax.scan` chunks with a progress bar
    between them; the samples are bit-identical for every value.
  vanilla_speed_up: --mode compare runs vanilla with this k (None: speed_up, the same steps as PDS).
  compare_num_steps: --mode compare also runs vanilla and PDS at each of these step counts
    (sampling.num_steps = N, same seeds) for its metric-vs-NFE plot; () runs only the two above.
    On the command line: --config.sampling.compare_num_steps="(10, 20, 50)".
  The fields of the other sampling methods are added by `add_sampler_fields`.
  """
  sampling.speed_up = 1.
  sampling.alpha = config_dict.placeholder(float)
  sampling.freq_mask_path = config_dict.placeholder(str)
  sampling.space_mask_path = config_dict.placeholder(str)
  sampling.pds_variant = 'official'
  sampling.num_chunks = 10
  sampling.vanilla_speed_up = config_dict.placeholder(float)
  sampling.compare_num_steps = ()
  add_sampler_fields(sampling)


def add_sampler_fields(sampling: ml_collections.ConfigDict) -> None:
  """Adds the `config.sampling` fields every registered sampling method declares, in place.

  Each method declares its fields with their defaults in its own file (`pds_jax.samplers`, e.g.
  num_steps, rho and noise_removal in grid.py, solver_order in dpm_solver.py, ode_rtol in ode.py);
  a value the config already set is kept. method (score_sde's field, 'pc' by default) names one of
  `pds_jax.samplers.methods.method_names()` or 'init_aware' (the alias of the earlier init-aware
  sampler).
  """
  from pds_jax.samplers import methods  # importing pds_jax.samplers registers every method
  for name, field in methods.declared_fields().items():
    if name not in sampling:
      sampling[name] = config_dict.placeholder(field.kind) if field.default is None else field.default


def add_scale_fields(evaluate: ml_collections.ConfigDict) -> None:
  """Adds the multi-device sampling fields to `config.eval` in place.

  parallel: 'sharding' (jit over a jax.sharding.Mesh of the local devices) or 'pmap' (score_sde's
    path); both give the same samples. eval.batch_size is the per-host batch of one round and must
    be divisible by the number of local devices.
  checkpoint_path: the checkpoint file or folder to sample from (None: the workdir's checkpoints/).
  wait_timeout: seconds host 0 waits for the other hosts' shards before writing the merged report.
  """
  evaluate.parallel = 'sharding'
  evaluate.checkpoint_path = config_dict.placeholder(str)
  evaluate.wait_timeout = 24 * 3600.


def add_data_fields(data: ml_collections.ConfigDict) -> None:
  """Adds the optional data-source fields read by `pds_jax.datasets` to `config.data` in place.

  path: image folder, .npz or .npy file (data.dataset 'folder' / 'npz' / 'npy').
  array_key: the array of an .npz holding several.
  tfds_dir: TFDS data folder (ArrayRecord format) for CIFAR10 / SVHN / CELEBA / LSUN; None reads
    $TFDS_DATA_DIR, then ~/tensorflow_datasets.
  tfrecords_path: score_sde's FFHQ / CelebAHQ TFRecord file.
  category: LSUN category (score_sde's LSUN configs set it).
  """
  for name in ('path', 'array_key', 'tfds_dir', 'tfrecords_path', 'category'):
    if name not in data:  # keep a value a config already set (score_sde's LSUN category, FFHQ path)
      data[name] = config_dict.placeholder(str)


def add_stats_and_metric_fields(config: ml_collections.ConfigDict) -> None:
  """Adds `config.stats` (for --mode stats) and the metric fields of `config.eval` (--mode eval).

  stats.num_images: statistics over a random subset of this many images (None: all of them; the
    official PDS script uses 200). stats.split: 'train', 'eval' or 'all'.
  eval.inception_path: the FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05
    state dict, .pth or .npz); None skips FID / KID / IS. eval.num_reference: reference images
    for --mode eval (from eval.reference_split of the dataset). eval.kid_subsets and
    eval.kid_subset_size: KID's subsets (the size is capped by the smaller set). eval.metric_seed:
    seed of the SWD directions and KID subsets; eval.is_splits, eval.inception_batch_size: IS
    splits and Inception batch.
  eval.fid_stats_path: a `<dataset>_stats.npz` of --mode fid_stats or score_sde (pool_3 and / or
    mu, sigma); --mode eval takes the reference's Inception statistics from it instead of running
    Inception on reference images (None: compute them). eval.fid_stats_num_images: --mode
    fid_stats over a seeded subset of this many images of eval.reference_split (None: all).
  """
  config.stats = stats = ml_collections.ConfigDict()
  stats.num_images = config_dict.placeholder(int)
  stats.split = 'train'
  evaluate = config.eval
  evaluate.inception_path = config_dict.placeholder(str)
  evaluate.num_reference = 10000
  evaluate.reference_split = 'train'
  evaluate.kid_subsets = 100
  evaluate.kid_subset_size = 1000
  evaluate.metric_seed = 0
  evaluate.is_splits = 10
  evaluate.inception_batch_size = 50
  evaluate.fid_stats_path = config_dict.placeholder(str)
  evaluate.fid_stats_num_images = config_dict.placeholder(int)


def add_init_aware_fields(config: ml_collections.ConfigDict) -> None:
  """Adds initialization-aware sampling (Fassina et al.; `pds_jax.init_aware`) to a config in place.

  config.sampling:
    init: x_T's distribution for every method — 'auto' (the default: the spectral Gaussian q_T of the
      init folder on VE models for the solvers that follow the probability-flow ODE from σ_max (the
      deterministic ones, edm_stochastic, restart), whose trained denoisers can fail at large
      σ — docs/results.md, "Noise samples" — and the SDE's prior otherwise), 'prior' (the SDE's
      prior at T), or a q_T at σ_T fitted by --mode fit_init: 'spectral_gaussian' (closed form, zero
      training), 'flow' (learned), 'gaussian' (N(0, σ_T² I), uninformed) or 'empirical' (training
      images + σ_T ε, the oracle). fit_init fits 'spectral_gaussian' for 'auto' and 'prior'.
    init_path: read-only: where sampling reads q_T when <workdir>/init (what --mode fit_init writes)
      holds none; the shipped config points it at the shipped init. None: <workdir>/init only.
    init_sampler, init_nodes, init_rho, init_sigma_min: the method = 'init_aware' alias (the
      earlier init-aware sampler): 'heun' / 'euler' / 'ancestral' on the Karras grid σ_T →
      init_sigma_min (init_nodes nodes, ρ = init_rho, then 0), or 'pc' (init_nodes steps), from
      sampling.init ('prior' reads as 'spectral_gaussian').
  config.init_aware (used by --mode fit_init):
    sigma_t: σ_T in the model's data range (None: choose it within sigma_t_bounds with
      sigma_t_rule; on the command line --config.init_aware.sigma_t=None unsets a config's value). sigma_t_rule 'principal' (images): the smallest σ from which on the closed-form
      q_T is within sigma_t_tolerance (W1 / std beyond the finite-sample floor) of the noised
      images along their num_principal_directions leading principal directions; 'dip': the
      dip-test procedure of Fassina et al. on num_directions random directions, a projection
      counting as multimodal when its p-value is below dip_alpha / num_directions (Bonferroni: with
      the official z-score rule one of many directions of unimodal data misfires and sets σ_T); on
      images it returns its lower bound, random projections being Gaussian.
    num_images: training images the init is fitted on (a seeded subset; val_fraction held out).
    flow_type, regime, epochs, batch_size, lr (None: the flow's default), tarflow.*, coupling.*:
      the flow for init = 'flow' (TarFlow's data_scale None means 2 σ_T, the paper's 7 → 14).
  """
  s = config.sampling
  s.init = 'auto'
  s.init_sampler = 'heun'
  s.init_nodes = 20
  s.init_rho = 5.
  s.init_sigma_min = 0.002
  s.init_path = config_dict.placeholder(str)
  config.init_aware = ia = ml_collections.ConfigDict()
  ia.sigma_t = config_dict.placeholder(float)
  ia.sigma_t_bounds = (0.1, 20.)
  ia.sigma_t_rule = 'principal'
  ia.sigma_t_tolerance = 0.05
  ia.num_principal_directions = 16
  ia.num_directions = 64
  ia.dip_alpha = 0.05
  ia.num_images = 4096
  ia.val_fraction = 0.1
  ia.flow_type = 'tarflow'
  ia.regime = 'dynamic'
  ia.epochs = 20
  ia.batch_size = 64
  ia.lr = config_dict.placeholder(float)
  ia.tarflow = ml_collections.ConfigDict(dict(patch_size=2, channels=128, num_blocks=1, layers_per_block=8,
                                              head_dim=64, expansion=4, data_scale=config_dict.placeholder(float)))
  ia.coupling = ml_collections.ConfigDict(dict(base='gaussian', df=3., flow_layers=5, nn_width=50, nn_depth=3))


def add_likelihood_fields(config: ml_collections.ConfigDict) -> None:
  """Adds `config.likelihood` (--mode likelihood, `pds_jax.likelihood.get_likelihood_fn`) in place.

  hutchinson_type: 'Rademacher' or 'Gaussian' (score_sde's Hutchinson–Skilling noise, one ε per
    image), or 'exact' (the full Jacobian trace: D Jacobian-vector products per step, small images).
  rtol, atol, method: the adaptive ODE solver (score_sde: 1e-5, 1e-5, 'RK45' = Dormand–Prince
    5(4); or 'tsit5'); max_steps: its step budget per image.
  eps: the ODE runs from eps to T (score_sde: 1e-5 for every SDE).
  dequantization: 'uniform' (score_sde's (255 x + u) / 256 on 8-bit data; without it bits/dim can
    go negative) or 'none'; None (the default): 'uniform' for image data, 'none' for the
    continuous Gaussian reference.
  The images are eval.num_samples images of the split eval.bpd_dataset ('test': the eval split,
  'train'), in rounds of eval.batch_size; with more images than the split holds, the split is
  repeated with fresh dequantization noise (score_sde repeats its test set 5 times).
  """
  config.likelihood = lk = ml_collections.ConfigDict()
  lk.hutchinson_type = 'Rademacher'
  lk.rtol = 1e-5
  lk.atol = 1e-5
  lk.method = 'RK45'
  lk.eps = 1e-5
  lk.max_steps = 4096
  lk.dequantization = config_dict.placeholder(str)


def add_controllable_fields(config: ml_collections.ConfigDict) -> None:
  """Adds `config.inpaint` and `config.colorize` (--mode inpaint / colorize) in place.

  Both run score_sde's PC sampler with the config.sampling fields (predictor, corrector, snr,
  n_steps_each, noise_removal, speed_up, PDS masks, alpha, pds_variant, num_chunks).
  inpaint.mask: the built-in mask when --mask_path is not given: 'center_square' (the central
    H/2 × W/2 square is missing), 'left_half' (the left half is known, as in score_sde's notebook)
    or 'random_50' (each pixel known with probability ½, the same for every channel and image).
  inpaint.mask_seed: the seed of 'random_50'.
  known_init: the known region at T: 'data' (score_sde: the observation itself) or 'marginal'
    (score_sde_pytorch issue #39: its time-T marginal m_T y + σ_T ξ).
  """
  config.inpaint = inpaint = ml_collections.ConfigDict()
  inpaint.mask = 'center_square'
  inpaint.mask_seed = 0
  inpaint.known_init = 'data'
  config.colorize = colorize = ml_collections.ConfigDict()
  colorize.known_init = 'data'
