"""The MFU denominator: datasheet peaks for known chips, a measured matmul elsewhere, and
never an MFU above 100% (a measured peak is raised to a step that beats it)."""
import pytest

from interbert_jax.training import flops


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("cpu", None), ("NVIDIA GeForce RTX 4090", None)])
def test_datasheet_peak(kind, peak):
  assert flops.datasheet_peak(kind) == peak


def test_mfu_never_above_one_against_a_measured_matmul():
  # 1e9 FLOPs/example at 300 examples/s on 2 devices = 1.5e11 FLOP/s per device.
  mfu, peak = flops.mfu(1e9, 300.0, 1e11, 2, "measured matmul")   # start-up under load
  assert mfu == 1.0 and peak == 1.5e11
  mfu, peak = flops.mfu(1e9, 100.0, peak, 2, "measured matmul")   # the raised peak stays
  assert mfu == pytest.approx(1 / 3) and peak == 1.5e11
  mfu, _ = flops.mfu(1e9, 300.0, 989e12, 2, "datasheet dense bf16, NVIDIA H100")
  assert mfu == pytest.approx(1.5e11 / 989e12)


def test_configured_and_measured_peaks():
  assert flops.peak_flops_per_device(2e12, "float32") == (2e12, "config")
  peak, source = flops.peak_flops_per_device(0.0, "float32")    # CPU: measured
  assert source == "measured matmul" and peak > 1e8
