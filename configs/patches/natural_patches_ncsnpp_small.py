"""The shipped default model: a small NCSN++ (VE SDE, continuous) on the bundled 32×32 natural-image
patches (`pds_jax.datasets`, 'natural_patches'), sized to train on 2 CPU cores in about an hour.

Trained with this project's own `--mode train` (the command and the measured quality are in
`pds_jax/assets/natural_patches_32/README.md`); the shipped checkpoint holds only `params_ema`.
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  # training
  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.batch_size = 32
  training.n_iters = 10000
  training.n_jitted_steps = 1
  training.log_freq = 50
  training.eval_freq = 500
  training.snapshot_freq = 2000
  training.snapshot_freq_for_preemption = 500
  training.reduce_mean = True
  training.snapshot_sampling = False  # sample with --mode sample / compare afterwards

  # sampling
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'

  # evaluation
  evaluate = config.eval
  evaluate.batch_size = 64
  evaluate.num_samples = 256

  # data
  data = config.data
  data.dataset = 'natural_patches'
  data.image_size = 32
  data.random_flip = True
  data.centered = False

  # model
  model = config.model
  model.name = 'ncsnpp'
  model.sigma_min = 0.01
  model.sigma_max = 50  # Song & Ermon: the largest pairwise distance of 3000 training patches is 49.6
  model.num_scales = 1000
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.dropout = 0.
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 16
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (8,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'none'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.fourier_scale = 16
  model.conv_size = 3

  # optimization
  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 200

  return config
