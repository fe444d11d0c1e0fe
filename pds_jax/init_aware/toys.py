"""Toy targets of Fassina et al. with exact noised densities, scores and denoisers (docs/method.md §8).

`GaussianMixture`  p = Σ_k w_k N(μ_k, Σ_k); its VE marginal p_σ = p * N(0, σ² I) is the mixture
                   with Σ_k + σ² I, so log p_σ, the score ∇ log p_σ and the denoiser
                   D(x, σ) = x + σ² ∇ log p_σ(x) are closed forms (`noised(σ)` returns p_σ).
`StudentTMixture`  p = Σ_k w_k t_ν(μ_k, Σ_k) (multivariate Student-t, Σ_k = L_k L_kᵀ). p_σ has no
                   closed form; with the scale-mixture t_ν(μ, Σ) = ∫ N(μ, Σ / g) Γ(g; ν/2, ν/2) dg,
                     p_σ(x) = Σ_k w_k ∫ N(x; μ_k, Σ_k / g + σ² I) Γ(g; ν/2, rate ν/2) dg,
                   a 1-D integral per component, computed by the trapezoidal rule in u = log g
                   on [-25, 5] (`num_nodes` nodes, exponentially accurate for this smooth,
                   rapidly decaying integrand; at σ = 0 it reproduces the closed form). Its
                   score and denoiser are the autodiff gradient of that quadrature.

Both evaluate every component through the eigendecomposition Σ_k = V_k diag(λ_k) V_kᵀ, so any
extra isotropic variance (σ², also one per item of a batch) costs no new factorisation:
  log N(x; μ, Σ + s I) = -½ Σ_i (V_kᵀ(x - μ))_i² / (λ_i + s) - ½ Σ_i log(2π (λ_i + s)).

Builders with the official settings (`toy_data_experiments/src/create_data*.py`, distribution
seed 0, component scale 0.1, global scale 4, Dirichlet(1) weights, random lower-triangular
scales L = 4 · A · diag(u) · 0.1 with A unit lower-triangular, entries N(0, 1), u ~ U(0.1, 1)):
  `grid_gaussian_mixture`  25 Gaussian modes on the grid {-2, …, 2}² (dim 2);
  `random_student_t_mixture`  modes at U(-1, 1)^d, ν = 3: 4 modes in 2-D, 20 in 10-D;
  `random_gaussian_mixture`  the same construction with Gaussian components (e.g. 20 modes, 10-D).
The weights, locations and scales are the official draws (the same jax.random calls; checked
against a numpyro 0.20.1 build). Each mixture is standardised as the official code does,
x ↦ (x - m) / s with m the mean vector and s the standard deviation of all coordinates pooled,
but with the exact moments of the mixture where the official code uses a 10⁵-draw estimate:
measured differences 0.02% in s and 0.004 in m for the grid GMM, ~1.5% in s for the Student-t
mixtures (whose t₃ sample variance converges slowly).
"""
from __future__ import annotations

import functools
from typing import Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp

_LOG_2PI = float(np.log(2 * np.pi))


def _check_points(x: jax.Array, dim: int, name: str) -> None:
  if x.ndim != 2 or x.shape[1] != dim:
    raise ValueError(f'{name}: expected points of shape (B, {dim}), got {x.shape}.')


def _noise_var(sigma, x: jax.Array) -> jax.Array:
  """σ² as a (B, 1, 1) array for a scalar σ or one σ per item (B,)."""
  sigma = jnp.asarray(sigma, x.dtype)
  return jnp.broadcast_to(sigma ** 2, (x.shape[0],))[:, None, None]


def _eigh(matrices) -> Tuple[jax.Array, jax.Array]:
  """(λ (K, D), V (K, D, D)) of symmetric matrices, computed in float64 NumPy.

  float32 `eigh` loses the small eigenvalues of the ill-conditioned toy covariances (condition
  numbers ~10⁶ in 10-D), which would put errors of ~10⁻² into log p.
  """
  evals, evecs = np.linalg.eigh(np.asarray(matrices, np.float64))
  if not np.all(evals > 0):
    raise ValueError(f'toys: covariance/scale matrices must be positive definite, min eigenvalue {evals.min():.3g}.')
  return jnp.asarray(evals, jnp.float32), jnp.asarray(evecs, jnp.float32)


def _eig_log_normal(x: jax.Array, means: jax.Array, evals: jax.Array, evecs: jax.Array,
                    extra_var: jax.Array) -> jax.Array:
  """log N(x_b; μ_k, V_k diag(λ_k + s_b) V_kᵀ) for x (B, D): shape (B, K); s (B, 1, 1)."""
  y = jnp.einsum('kij,bki->bkj', evecs, x[:, None, :] - means[None])  # V_kᵀ (x_b - μ_k)
  var = evals[None] + extra_var  # (B, K, D)
  return -0.5 * jnp.sum(y ** 2 / var + jnp.log(var) + _LOG_2PI, axis=-1)


def _matrices(evals: jax.Array, evecs: jax.Array) -> jax.Array:
  """V diag(λ) Vᵀ per component, (K, D, D)."""
  return jnp.einsum('kij,kj,klj->kil', evecs, evals, evecs)


class GaussianMixture(flax.struct.PyTreeNode):
  """Σ_k w_k N(μ_k, Σ_k), Σ_k = V_k diag(λ_k) V_kᵀ: weights (K,), means (K, D), evals (K, D), evecs (K, D, D).

  Build it with `from_covariances`; `covs` gives the matrices back.
  """
  weights: jax.Array
  means: jax.Array
  evals: jax.Array
  evecs: jax.Array

  @classmethod
  def from_covariances(cls, weights, means, covs) -> 'GaussianMixture':
    """The mixture with covariances covs (K, D, D) (positive definite)."""
    return cls(jnp.asarray(weights, jnp.float32), jnp.asarray(means, jnp.float32), *_eigh(covs))

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def covs(self) -> jax.Array:
    return _matrices(self.evals, self.evecs)

  def _components(self, x: jax.Array, sigma) -> jax.Array:
    """log w_k + log N(x_b; μ_k, Σ_k + σ_b² I), shape (B, K)."""
    _check_points(x, self.dim, 'GaussianMixture')
    return jnp.log(self.weights) + _eig_log_normal(x, self.means, self.evals, self.evecs, _noise_var(sigma, x))

  def log_prob(self, x: jax.Array) -> jax.Array:
    """log p(x) for x (B, D): shape (B,)."""
    return self.noised_log_prob(x, 0.)

  def noised_log_prob(self, x: jax.Array, sigma) -> jax.Array:
    """log p_σ(x), p_σ = p * N(0, σ² I), for x (B, D) and σ scalar or (B,): shape (B,)."""
    return logsumexp(self._components(x, sigma), axis=1)

  def noised_score(self, x: jax.Array, sigma) -> jax.Array:
    """∇ log p_σ(x) = Σ_k γ_k(x) (Σ_k + σ² I)⁻¹ (μ_k - x), γ the responsibilities: shape (B, D)."""
    gamma = jax.nn.softmax(self._components(x, sigma), axis=1)  # (B, K)
    y = jnp.einsum('kij,bki->bkj', self.evecs, self.means[None] - x[:, None, :])
    grads = jnp.einsum('kij,bkj->bki', self.evecs, y / (self.evals[None] + _noise_var(sigma, x)))
    return jnp.einsum('bk,bki->bi', gamma, grads)

  def score(self, x: jax.Array) -> jax.Array:
    """∇ log p(x) for x (B, D)."""
    return self.noised_score(x, 0.)

  def denoiser(self, x: jax.Array, sigma) -> jax.Array:
    """The exact VE denoiser E[x_0 | x_0 + σ ε = x] = x + σ² ∇ log p_σ(x), σ scalar or (B,)."""
    return x + _noise_var(sigma, x)[:, :, 0] * self.noised_score(x, sigma)

  def noised(self, sigma: float) -> 'GaussianMixture':
    """p_σ = Σ_k w_k N(μ_k, Σ_k + σ² I)."""
    return self.replace(evals=self.evals + sigma ** 2)

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """n draws μ_k + V_k (sqrt(λ_k) ⊙ z), shape (n, D)."""
    k_idx, k_z = jax.random.split(rng)
    idx = jax.random.categorical(k_idx, jnp.log(self.weights), shape=(n,))
    z = jax.random.normal(k_z, (n, self.dim)) * jnp.sqrt(self.evals[idx])
    return self.means[idx] + jnp.einsum('nij,nj->ni', self.evecs[idx], z)

  def moments(self) -> Tuple[jax.Array, jax.Array]:
    """Exact mean (D,) and covariance (D, D)."""
    return _mixture_moments(self.weights, self.means, self.covs)

  def affine(self, shift: jax.Array, scale: float) -> 'GaussianMixture':
    """The law of (x - shift) / scale."""
    return self.replace(means=(self.means - shift) / scale, evals=self.evals / scale ** 2)


class StudentTMixture(flax.struct.PyTreeNode):
  """Σ_k w_k t_ν(μ_k, Σ_k), Σ_k = V_k diag(λ_k) V_kᵀ the scale matrices: weights (K,), locs (K, D),
  evals (K, D), evecs (K, D, D), df ν > 0. Build it with `from_scale_trils` (Σ_k = L_k L_kᵀ).

  `num_nodes` is the number of quadrature nodes of the noised density (module docstring).
  """
  weights: jax.Array
  locs: jax.Array
  evals: jax.Array
  evecs: jax.Array
  df: float = flax.struct.field(pytree_node=False, default=3.)
  num_nodes: int = flax.struct.field(pytree_node=False, default=256)

  @classmethod
  def from_scale_trils(cls, weights, locs, scale_trils, df: float = 3., num_nodes: int = 256) -> 'StudentTMixture':
    """The mixture with scale matrices L_k L_kᵀ for scale_trils (K, D, D)."""
    trils = np.asarray(scale_trils, np.float64)
    evals, evecs = _eigh(np.einsum('kij,klj->kil', trils, trils))
    return cls(jnp.asarray(weights, jnp.float32), jnp.asarray(locs, jnp.float32), evals, evecs, df=float(df),
               num_nodes=int(num_nodes))

  @property
  def dim(self) -> int:
    return self.locs.shape[1]

  @property
  def scales(self) -> jax.Array:
    """The scale matrices Σ_k, (K, D, D)."""
    return _matrices(self.evals, self.evecs)

  def log_prob(self, x: jax.Array) -> jax.Array:
    """The closed-form log p(x) for x (B, D): shape (B,).

    log t_ν(x; μ, Σ) = log Γ((ν+D)/2) - log Γ(ν/2) - (D/2) log(νπ) - ½ log|Σ|
                       - (ν+D)/2 · log(1 + (x-μ)ᵀ Σ⁻¹ (x-μ) / ν).
    """
    _check_points(x, self.dim, 'StudentTMixture')
    nu, d = self.df, self.dim
    y = jnp.einsum('kij,bki->bkj', self.evecs, x[:, None, :] - self.locs[None])
    maha = jnp.sum(y ** 2 / self.evals[None], axis=-1)  # (B, K)
    log_t = (gammaln((nu + d) / 2) - gammaln(nu / 2) - d / 2 * jnp.log(nu * jnp.pi)
             - 0.5 * jnp.sum(jnp.log(self.evals), axis=-1) - (nu + d) / 2 * jnp.log1p(maha / nu))
    return logsumexp(jnp.log(self.weights) + log_t, axis=1)

  def noised_log_prob(self, x: jax.Array, sigma) -> jax.Array:
    """log p_σ(x) by quadrature over the Gamma mixing variable (module docstring): shape (B,)."""
    _check_points(x, self.dim, 'StudentTMixture')
    return _t_noised_log_prob(self, x, _noise_var(sigma, x))

  def noised_score(self, x: jax.Array, sigma) -> jax.Array:
    """∇ log p_σ(x), the gradient of the quadrature, shape (B, D)."""
    return jax.grad(lambda y: jnp.sum(self.noised_log_prob(y, sigma)))(x)

  def denoiser(self, x: jax.Array, sigma) -> jax.Array:
    """D(x, σ) = x + σ² ∇ log p_σ(x) (quadrature), σ scalar or (B,)."""
    return x + _noise_var(sigma, x)[:, :, 0] * self.noised_score(x, sigma)

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """n draws μ_k + V_k (sqrt(λ_k) ⊙ z) / sqrt(g), z ~ N(0, I), g ~ Γ(ν/2, rate ν/2): shape (n, D)."""
    k_idx, k_z, k_g = jax.random.split(rng, 3)
    idx = jax.random.categorical(k_idx, jnp.log(self.weights), shape=(n,))
    z = jax.random.normal(k_z, (n, self.dim)) * jnp.sqrt(self.evals[idx])
    g = jax.random.gamma(k_g, self.df / 2, (n,)) / (self.df / 2)
    return self.locs[idx] + jnp.einsum('nij,nj->ni', self.evecs[idx], z) / jnp.sqrt(g)[:, None]

  def moments(self) -> Tuple[jax.Array, jax.Array]:
    """Exact mean (D,) and covariance (D, D) (component covariance Σ_k ν / (ν - 2), needs ν > 2)."""
    if self.df <= 2:
      raise ValueError(f'StudentTMixture.moments: the covariance is infinite for df = {self.df} <= 2.')
    return _mixture_moments(self.weights, self.locs, self.scales * self.df / (self.df - 2))

  def affine(self, shift: jax.Array, scale: float) -> 'StudentTMixture':
    """The law of (x - shift) / scale."""
    return self.replace(locs=(self.locs - shift) / scale, evals=self.evals / scale ** 2)


@jax.jit
def _t_noised_log_prob(mixture: StudentTMixture, x: jax.Array, s2: jax.Array) -> jax.Array:
  """Σ_k w_k ∫ N(x; μ_k, Σ_k / g + s2 I) Γ(g; ν/2, ν/2) dg by the trapezoidal rule in u = log g."""
  a = b = mixture.df / 2
  u, h = jnp.linspace(-25., 5., mixture.num_nodes, retstep=True)
  g = jnp.exp(u)
  # log of Γ(g; a, rate b) · g  (the Jacobian of g = e^u), times the trapezoid weights.
  log_w = a * jnp.log(b) - gammaln(a) + a * u - b * g + jnp.log(h)
  log_w = log_w.at[jnp.array([0, -1])].add(jnp.log(0.5))

  def at_node(args):  # (B, K): log w_k + log N(x; μ_k, Σ_k / g_j + σ² I) + log weight_j
    g_j, log_w_j = args
    log_normal = _eig_log_normal(x, mixture.locs, mixture.evals / g_j, mixture.evecs, s2)
    return jnp.log(mixture.weights) + log_normal + log_w_j

  return logsumexp(jax.lax.map(at_node, (g, log_w)), axis=(0, 2))


def _mixture_moments(weights, means, covs) -> Tuple[jax.Array, jax.Array]:
  """Mean Σ_k w_k μ_k and covariance Σ_k w_k (C_k + (μ_k - m)(μ_k - m)ᵀ) of a mixture (NumPy or JAX arrays)."""
  mean = weights @ means
  centred = means - mean
  return mean, (weights[:, None, None] * (covs + centred[:, :, None] * centred[:, None, :])).sum(0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _official_parameters(rng: jax.Array, dim: int, n_mixture: int, scale: float, global_scale: float,
                         n_grid: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(weights (K,), locs (K, D), scale_trils (K, D, D)) drawn as the official builders draw them.

  Weights: Dirichlet(1) from the first half of split(rng) (numpyro's `Dirichlet.sample` is
  `jax.random.dirichlet` clipped to [tiny, 1 - eps]). Scales: `build_random_cholesky` on each key
  of split(second half, K) — one key for both its normal and uniform draws, as there. Locs: the
  grid {-(n_grid//2), …, n_grid//2}^D when n_grid > 0, else U(-1, 1)^D from rng itself.
  """
  k_weights, k_chol = jax.random.split(rng)
  weights = jax.random.dirichlet(k_weights, jnp.ones((n_mixture,)))
  weights = jnp.clip(weights, jnp.finfo(weights.dtype).tiny, 1 - jnp.finfo(weights.dtype).eps)

  def tril(key):
    source = jax.random.normal(key, ((dim - 1) * dim // 2,))
    diag = jax.random.uniform(key, (dim,), minval=0.1, maxval=1.)
    a = jnp.eye(dim).at[jnp.tril_indices(dim, k=-1)].set(source)
    return global_scale * a @ jnp.diag(diag) * scale

  trils = jax.vmap(tril)(jax.random.split(k_chol, n_mixture))
  if n_grid:
    axis = jnp.linspace(-(n_grid // 2), n_grid // 2, n_grid)
    locs = jnp.stack([g.ravel() for g in jnp.meshgrid(*([axis] * dim), indexing='ij')], axis=-1)
  else:
    locs = jax.random.uniform(rng, (n_mixture, dim)) * 2 - 1
  return weights, locs, trils


def _standardised_parts(seed: int, dim: int, n_mixture: int, scale: float, global_scale: float, n_grid: int,
                        variance_factor: float):
  """Official parameters in float64, standardised: (weights, (locs - m) / s, trils / s).

  m is the mixture mean and s² = mean_j [Var x_j + (m_j - mean(m))²], the variance of all
  coordinates pooled around their common mean (the official `smps.std()`); component
  covariances are L Lᵀ · variance_factor (ν / (ν - 2) for Student-t).
  """
  weights, locs, trils = (np.asarray(a, np.float64) for a in _official_parameters(
      jax.random.PRNGKey(seed), dim, n_mixture, scale, global_scale, n_grid))
  mean, cov = _mixture_moments(weights, locs, variance_factor * np.einsum('kij,klj->kil', trils, trils))
  std = np.sqrt(np.mean(np.diag(cov) + (mean - mean.mean()) ** 2))
  return weights, (locs - mean) / std, trils / std


def _gaussian_from_trils(weights, locs, trils) -> GaussianMixture:
  return GaussianMixture.from_covariances(weights, locs, np.einsum('kij,klj->kil', trils, trils))


def grid_gaussian_mixture(seed: int = 0, dim: int = 2, n_grid: int = 5, scale: float = 0.1,
                          global_scale: float = 4.) -> GaussianMixture:
  """The official grid GMM (`build_gmm_ref_dist`): n_grid^dim modes on the integer grid, standardised."""
  return _gaussian_from_trils(*_standardised_parts(seed, dim, n_grid ** dim, scale, global_scale, n_grid, 1.))


def random_student_t_mixture(seed: int = 0, dim: int = 2, n_mixture: int = 4, df: float = 3., scale: float = 0.1,
                             global_scale: float = 4.) -> StudentTMixture:
  """The official heavy-tailed toy (`build_heavy_tail_ref_dist`): modes at U(-1, 1)^dim, standardised.

  The paper's targets: (dim, n_mixture) = (2, 4) and (10, 20), df 3.
  """
  if df <= 2:
    raise ValueError(f'random_student_t_mixture: df must be > 2 (finite variance, needed to standardise), got {df}.')
  parts = _standardised_parts(seed, dim, n_mixture, scale, global_scale, 0, df / (df - 2))
  return StudentTMixture.from_scale_trils(*parts, df=df)


def random_gaussian_mixture(seed: int = 0, dim: int = 10, n_mixture: int = 20, scale: float = 0.1,
                            global_scale: float = 4.) -> GaussianMixture:
  """`random_student_t_mixture`'s construction with Gaussian components, standardised."""
  return _gaussian_from_trils(*_standardised_parts(seed, dim, n_mixture, scale, global_scale, 0, 1.))
