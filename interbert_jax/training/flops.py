"""FLOPs per example (analytic) and the device's measured matmul peak, for MFU."""
import time

import jax
import jax.numpy as jnp


def _layer_flops(seq: int, hidden: int, mlp: int) -> int:
  """Forward FLOPs of one post-LN BERT layer over `seq` tokens (2 FLOPs per MAC).

  QKV + output projections 4*H^2, MLP 2*H*M per token; QK^T and AV 2*S*H per token.
  """
  per_token = 2 * (4 * hidden * hidden + 2 * hidden * mlp) + 2 * 2 * seq * hidden
  return seq * per_token


def itm_flops_per_pair(m, text_len: int, regions: int) -> int:
  """Forward FLOPs from the inputs to the ITM logits for one (image, caption) pair.

  `m` is config.model; text_len T and regions R (incl. the global token) as padded. What
  retrieval scoring computes (the MSM / MRM heads are not).
  """
  h, t, r = int(m.hidden_size), int(text_len), int(regions)
  fwd = 2 * r * (int(m.feature_dim) + int(m.location_dim)) * h                 # region embedding
  fwd += int(m.single_stream.layers) * _layer_flops(r + t, h, int(m.single_stream.mlp_dim))
  fwd += int(m.text_stream.layers) * _layer_flops(t, h, int(m.text_stream.mlp_dim))
  fwd += int(m.image_stream.layers) * _layer_flops(r, h, int(m.image_stream.mlp_dim))
  fwd += 2 * 2 * h * int(m.pooler_dim) + 2 * int(m.pooler_dim) * 2            # poolers, ITM
  return fwd


def msm_head_positions(config) -> float:
  """Text positions per example the train step runs the MSM head at: P = the
  `msm_positions` slots (data.max_msm_targets, 0 = text_len), or with loss.msm_packing = f
  the packed slots, f * P (training/packed_msm.py; rounded up per batch shard; a step whose
  targets do not fit runs all P)."""
  p = int(config.data.max_msm_targets) or int(config.data.text_len)
  packing = float(config.loss.msm_packing)
  return packing * p if packing else float(p)


def train_flops_per_example(config) -> int:
  """Analytic training FLOPs for one example: 3x forward (backward = 2x forward).

  Counts matmuls only (embeddings lookups, softmax, LayerNorm are < 1%). MSM runs at
  `msm_head_positions` (the P target slots, or the packed ones), MRM at all R regions, as
  the train step does.
  """
  m, d = config.model, config.data
  h = int(m.hidden_size)
  t = int(d.text_len)
  r = int(d.max_regions) + 1
  p = msm_head_positions(config)
  fwd = itm_flops_per_pair(m, t, r)
  fwd += round(2 * p * (h * h + h * int(m.vocab_size)))                         # MSM head
  out = int(m.feature_dim) if m.mrm_target == "regress" else int(m.num_region_classes)
  fwd += 2 * r * (h * h + h * out)                                              # MRM head
  return 3 * fwd


def text_path_flops_per_example(config) -> int:
  """Training FLOPs of the text path alone (single stream over the text, text stream)."""
  m, t = config.model, int(config.data.text_len)
  h = int(m.hidden_size)
  fwd = sum(int(s.layers) * _layer_flops(t, h, int(s.mlp_dim))
            for s in (m.single_stream, m.text_stream))
  return 3 * fwd


# Dense bf16 peak FLOP/s of one chip from the vendors' datasheets (no structured sparsity),
# matched against jax's `device_kind` in this order (first substring that matches wins).
DATASHEET_BF16_PEAK = (
    ("TPU v6 lite", 918e12),   # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),   # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),        # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),          # SXM
    ("A100", 312e12),
)


def datasheet_peak(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of a known accelerator (DATASHEET_BF16_PEAK), else None."""
  for name, peak in DATASHEET_BF16_PEAK:
    if name.lower() in device_kind.lower():
      return peak
  return None


def peak_flops_per_device(configured: float, dtype: str) -> tuple[float, str]:
  """(peak FLOP/s per device, where it came from), the MFU denominator: the configured
  value when > 0, else the chip's datasheet peak (TPU v4 / v5e / v5p / v6e, A100, H100,
  H200), else a matmul measured on one local device (CPU, unknown chips). Measure before
  entering a multi-device mesh: a one-device computation inside it is refused."""
  if configured:
    return float(configured), "config"
  device = jax.local_devices()[0]
  peak = datasheet_peak(getattr(device, "device_kind", ""))
  if peak is not None:
    return peak, f"datasheet dense bf16, {device.device_kind}"
  return measure_peak_flops(dtype), "measured matmul"


def mfu(flops_per_example: float, examples_per_sec: float, peak: float, devices: int,
        source: str) -> tuple[float, float]:
  """-> (MFU in [0, 1], the peak used). Against a measured matmul (no datasheet), a step
  faster than the start-up measurement (a busy host at start-up) proves the peak is at least
  that fast: the peak is raised to it, so MFU never reads above 100%."""
  achieved = flops_per_example * examples_per_sec / max(devices, 1)
  if source == "measured matmul" and achieved > peak:
    peak = achieved
  return achieved / peak, peak


def measure_peak_flops(dtype: str = "float32", size: int | None = None, repeats: int = 5) -> float:
  """FLOP/s of a large square matmul on one device (the MFU denominator).

  On accelerators 8192^2 saturates the MXU/tensor cores; on CPU a 1024^2 matmul keeps the
  start-up cost under a second.
  """
  device = jax.local_devices()[0]
  if size is None:
    size = 1024 if device.platform == "cpu" else 8192
  x = jax.device_put(jnp.ones((size, size), jnp.dtype(dtype)), device)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    y = f(x)
  y.block_until_ready()
  seconds = (time.perf_counter() - start) / repeats
  return 2.0 * size ** 3 / seconds
