"""BERT layer (post-LN, erf GELU) and the layer stacks, scanned or unrolled, with remat."""
import math

import jax.numpy as jnp
from flax import linen as nn

from interbert_jax.model import common


class HeadsProjection(nn.Module):
  """x [..., *in_shape] -> [..., *out_shape] with kernel [*in_shape, *out_shape] and bias
  [*out_shape]. Not nn.DenseGeneral: that one initialises a flattened 2-D kernel, which
  breaks 3-D logical-axis metadata under an active rules context."""
  config: object
  in_shape: tuple
  out_shape: tuple
  kernel_names: tuple
  bias_names: tuple

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, pdtype = common.to_dtype(cfg.dtype), common.to_dtype(cfg.param_dtype)
    kernel = self.param("kernel", common.kernel_init(cfg.initializer_range, self.kernel_names),
                        self.in_shape + self.out_shape, pdtype)
    bias = self.param("bias", common.zeros_init(self.bias_names), self.out_shape, pdtype)
    # A plain 2-D matmul [.., in] x [in, out] on flattened views. Why not one dot_general
    # over the multi-axis kernel: XLA:CPU then materialises a transposed copy of every
    # attention kernel (and of activations) for the backward pass; the 2-D form lowers to
    # the same library matmuls as the MLP, without copies. Same contraction, same numbers.
    n_in = len(self.in_shape)
    d_in, d_out = math.prod(self.in_shape), math.prod(self.out_shape)
    lead = x.shape[:x.ndim - n_in]
    y = jnp.dot(x.astype(dtype).reshape(lead + (d_in,)),
                kernel.astype(dtype).reshape(d_in, d_out))
    return y.reshape(lead + self.out_shape) + bias.astype(dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention; softmax in float32 over an additive mask bias."""
  config: object
  num_heads: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, bias, deterministic):
    """x [B, L, H], bias float32 [B, 1, 1, L] -> [B, L, H]."""
    cfg = self.config
    dtype = common.to_dtype(cfg.dtype)
    head_dim = cfg.hidden_size // self.num_heads

    def proj(name):
      # Kernel [H, heads, head_dim]: heads are a separate axis so "heads" can be sharded.
      return HeadsProjection(cfg, (cfg.hidden_size,), (self.num_heads, head_dim),
                             ("embed", "heads", "kv"), ("heads", "kv"), name=name)(x)

    q = common.constrain(proj("query"), common.HEADS_AXES)
    k = common.constrain(proj("key"), common.HEADS_AXES)
    v = common.constrain(proj("value"), common.HEADS_AXES)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    scores = scores / math.sqrt(head_dim) + bias
    probs = nn.softmax(scores, axis=-1).astype(dtype)
    probs = common.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    ctx = common.constrain(ctx, common.HEADS_AXES)
    out = HeadsProjection(cfg, (self.num_heads, head_dim), (cfg.hidden_size,),
                          ("heads", "kv", "embed"), ("embed",), name="out")(ctx)
    return common.constrain(out, common.HIDDEN_AXES)


class Mlp(nn.Module):
  """BERT feed-forward: Dense H->M, GELU, Dense M->H."""
  config: object
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = common.dense(cfg, self.mlp_dim, ("embed", "mlp"), ("mlp",), name="wi")(x)
    h = common.constrain(common.gelu(h), common.MLP_AXES)
    return common.dense(cfg, cfg.hidden_size, ("mlp", "embed"), ("embed",), name="wo")(h)


class BertLayer(nn.Module):
  """One post-LN BERT layer. `scanned` returns (carry, None) as nn.scan expects."""
  config: object
  stack: object  # the stack's sub-config: layers, heads, mlp_dim, *_dropout.
  scanned: bool = False

  @nn.compact
  def __call__(self, x, bias, deterministic):
    """x [B, L, H], bias float32 [B, 1, 1, L] -> [B, L, H]."""
    cfg, st = self.config, self.stack
    h = SelfAttention(cfg, st.heads, st.attention_dropout, name="attention")(
        x, bias, deterministic)
    h = common.Dropout(st.hidden_dropout)(h, deterministic=deterministic)
    x = common.layer_norm(cfg, "attention_norm")(x + h)
    h = Mlp(cfg, st.mlp_dim, name="mlp")(x)
    h = common.Dropout(st.hidden_dropout)(h, deterministic=deterministic)
    x = common.layer_norm(cfg, "output_norm")(x + h)
    x = common.constrain(x, common.HIDDEN_AXES)
    return (x, None) if self.scanned else x


class Stack(nn.Module):
  """`stack.layers` BERT layers: `layer_{i}` submodules, or one scanned `layers` module
  whose params have a leading "layers" axis (model.scan_layers)."""
  config: object
  stack: object

  @nn.compact
  def __call__(self, x, mask, deterministic):
    """x [B, L, H], mask int [B, L] (1 = attend) -> [B, L, H]."""
    cfg = self.config
    bias = common.attention_bias(mask)
    use_remat, policy = common.checkpoint_policy(cfg.remat_policy)
    layer_cls = BertLayer
    if use_remat:
      # static_argnums counts `self` as 0: `deterministic` (arg 3) is a Python bool.
      layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not cfg.scan_layers,
                           static_argnums=(3,))
    if cfg.scan_layers:
      scanned = nn.scan(
          layer_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast),
          length=self.stack.layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.stack, scanned=True, name="layers")(x, bias, deterministic)
      return x
    for i in range(self.stack.layers):
      x = layer_cls(cfg, self.stack, name=f"layer_{i}")(x, bias, deterministic)
    return x
