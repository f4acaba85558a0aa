"""Shared pieces of the InterBERT modules: dtypes, initialisers, logical-axis helpers."""
import jax
import jax.numpy as jnp
from flax import linen as nn

# Logical activation layouts (mapped to mesh axes by interbert_jax.parallel's rules table).
HIDDEN_AXES = ("batch", "length", "embed")
HEADS_AXES = ("batch", "length", "heads", "kv")
MLP_AXES = ("batch", "length", "mlp")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPES = tuple(_DTYPES)                          # allowed model.dtype / model.param_dtype
_REMAT = {
    "none": None,
    "full": None,  # Save nothing: recompute the whole layer in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
REMAT_POLICIES = tuple(_REMAT)                   # allowed model.remat_policy


def to_dtype(name):
  """'float32' | 'bfloat16' -> jnp dtype (the config stores names so it serialises to JSON).
  The name is checked by `interbert.model_config_errors` before any module is built."""
  return _DTYPES[name]


def kernel_init(stddev, names):
  """N(0, stddev) (BERT's initializer_range), tagged with logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def vocab_rows(cfg) -> int:
  """Rows of the word table and MSM bias: model.vocab_size rounded up to a multiple of
  model.vocab_pad_multiple (1 = no padding), so the vocabulary axis splits evenly over a
  large mesh (docs/performance.md, pod memory). Rows >= vocab_size are never looked up and
  their MSM logits are masked."""
  multiple = int(cfg.get("vocab_pad_multiple", 1))
  return -(-int(cfg.vocab_size) // multiple) * multiple


def zeros_init(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def layer_norm(cfg, name):
  """Post-LN LayerNorm over the hidden axis; flax keeps its statistics in float32."""
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=to_dtype(cfg.dtype),
      param_dtype=to_dtype(cfg.param_dtype),
      scale_init=ones_init(("embed",)), bias_init=zeros_init(("embed",)),
      name=name)


def constant_init(value, names):
  return nn.with_logical_partitioning(nn.initializers.constant(value), names)


def dense(cfg, features, kernel_names, bias_names, name, bias_value=0.0):
  """nn.Dense with the model's dtypes and BERT init (bias = bias_value, BERT's 0); kernel [in, out]."""
  return nn.Dense(
      features, dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype),
      kernel_init=kernel_init(cfg.initializer_range, kernel_names),
      bias_init=constant_init(bias_value, bias_names), name=name)


def gelu(x):
  """BERT's exact (erf) GELU."""
  return nn.gelu(x, approximate=False)


def attention_bias(mask):
  """int mask [B, K] (1 = attend) -> additive float32 bias [B, 1, 1, K]: (1 - m) * -10000."""
  return ((1.0 - mask.astype(jnp.float32)) * -10000.0)[:, None, None, :]


def constrain(x, names):
  """Logical sharding constraint; a no-op without an active logical-axis rules context."""
  return nn.with_logical_constraint(x, names)


def checkpoint_policy(name):
  """model.remat_policy (one of REMAT_POLICIES) -> (use remat?, jax checkpoint policy)."""
  return name != "none", _REMAT[name]


_BITS = 16  # random bits per dropout decision: two decisions per 32-bit threefry word.


def keep_mask(rng, shape, keep_prob):
  """bool `shape`, True with probability round(keep_prob * 2^16) / 2^16.

  Why not `jax.random.bernoulli`: it hashes one threefry block per element (15M decisions
  per base-size step at batch 8). Each 32-bit word here gives two independent 16-bit
  uniforms, halving the hashing (docs/performance.md: the mask fusions went from ~5% to
  ~1.5% of the CPU step). The keep probability is within 2^-17 of the nominal one.
  """
  last = shape[-1] if shape else 1
  lead = tuple(shape[:-1])
  words = jax.random.bits(rng, lead + ((last + 1) // 2,), jnp.uint32)
  halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :last]
  threshold = min(max(int(round(keep_prob * (1 << _BITS))), 1), 1 << _BITS)
  return (halves < threshold).reshape(shape)


def keep_scale(keep_prob):
  """1 / (actual keep probability of `keep_mask`): keeps E[dropout(x)] == x exactly."""
  threshold = min(max(int(round(keep_prob * (1 << _BITS))), 1), 1 << _BITS)
  return (1 << _BITS) / threshold


class Dropout(nn.Module):
  """Inverted dropout (as nn.Dropout: rng collection "dropout", same call signature) with
  the cheaper 16-bit masks of `keep_mask`."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    mask = keep_mask(self.make_rng("dropout"), x.shape, keep_prob)
    scale = jnp.asarray(keep_scale(keep_prob), x.dtype)
    return jax.lax.select(mask, x * scale, jnp.zeros_like(x))
