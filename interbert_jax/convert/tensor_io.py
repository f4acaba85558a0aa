"""Reading and writing PyTorch-style state dicts as {name: numpy array}.

`.safetensors` goes through `safetensors.numpy` (no torch needed). `.bin`/`.pt`/`.pth` need
PyTorch, imported lazily so that interbert_jax never depends on it at run time.
"""
import os

import numpy as np

from interbert_jax import errors

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
# Weight files looked for, in order, when a directory is given (Hugging Face layout).
DIR_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(errors.UserError, ValueError):
  """A user-facing conversion problem (bad file, unknown or missing tensors, bad config)."""


def _torch(purpose):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(
        f"{purpose} needs PyTorch, which is not installed (pip install torch); "
        "or use a .safetensors file instead") from e
  return torch


def resolve_weights(path):
  """A weights file, or a directory holding model.safetensors / pytorch_model.bin -> file."""
  if os.path.isdir(path):
    for name in DIR_WEIGHT_FILES:
      candidate = os.path.join(path, name)
      if os.path.exists(candidate):
        return candidate
    raise ConversionError(f"{path}: directory has none of {', '.join(DIR_WEIGHT_FILES)}")
  if not os.path.exists(path):
    raise ConversionError(f"{path}: no such file")
  return path


def read_state_dict(path):
  """-> {name: np.ndarray} from a .safetensors or torch .bin file (or a HF directory).

  Sharded HF checkpoints (`*.index.json`) are not supported: merge them first.
  """
  path = resolve_weights(path)
  if path.endswith(SAFETENSORS_SUFFIX):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types.
      raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
  if path.endswith(TORCH_SUFFIXES):
    torch = _torch(f"reading {path}")
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
      raise ConversionError(f"{path}: not a readable PyTorch state dict ({e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
      obj = obj["state_dict"]  # training-checkpoint wrappers
    if not isinstance(obj, dict):
      raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, t in obj.items():
      if not hasattr(t, "detach"):
        raise ConversionError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
      t = t.detach().cpu()
      if t.dtype == torch.bfloat16:  # numpy has no bfloat16.
        t = t.float()
      out[name] = t.numpy()
    return out
  raise ConversionError(f"{path}: unknown weights format; expected a "
                        f"{'/'.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))} file")


def write_state_dict(path, state_dict):
  """Writes {name: np.ndarray} by extension: .safetensors (no torch) or .bin/.pt/.pth (torch).

  In a torch file, entries that are the *same* numpy object (a tied decoder) share one
  tensor, as `module.state_dict()` would save them.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith(SAFETENSORS_SUFFIX):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    try:
      save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path,
                metadata={"format": "pt"})
    except Exception as e:  # safetensors reports I/O failures as its own (Rust) error
      raise ConversionError(f"cannot write {path}: {errors.one_line(e)}") from None
    return
  if path.endswith(TORCH_SUFFIXES):
    torch = _torch(f"writing {path}")
    shared = {}
    out = {}
    for name, v in state_dict.items():
      if id(v) not in shared:
        shared[id(v)] = torch.from_numpy(np.ascontiguousarray(v).copy())
      out[name] = shared[id(v)]
    try:
      torch.save(out, path)
    except RuntimeError as e:  # torch's zip writer reports I/O failures as RuntimeError
      raise ConversionError(f"cannot write {path}: {errors.one_line(e)}") from None
    return
  raise ConversionError(f"{path}: output must end in "
                        f"{'/'.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}")


class TensorSource:
  """A state dict that is consumed by name, collecting every problem before raising.

  `take` returns float32 arrays; missing or mis-shaped entries are recorded (and a zero
  array returned so the walk can go on) and reported together by `check`.
  """

  def __init__(self, state_dict, origin):
    self.state_dict = state_dict
    self.origin = origin
    self.used = set()
    self.missing = []
    self.misshaped = []

  def has(self, name):
    return name in self.state_dict

  def take(self, name, shape):
    shape = tuple(int(s) for s in shape)
    if name not in self.state_dict:
      self.missing.append(f"{name} {shape}")
      return np.zeros(shape, np.float32)
    x = self.state_dict[name]
    self.used.add(name)
    if tuple(x.shape) != shape:
      self.misshaped.append(f"{name}: has {tuple(x.shape)}, expected {shape}")
      return np.zeros(shape, np.float32)
    if not np.issubdtype(x.dtype, np.floating):
      self.misshaped.append(f"{name}: dtype {x.dtype}, expected a float")
      return np.zeros(shape, np.float32)
    return np.asarray(x, np.float32)

  def unused(self):
    return sorted(set(self.state_dict) - self.used)

  def check(self, ignorable=lambda name: False):
    """Raises ConversionError listing missing, mis-shaped and unknown tensors.

    Returns the sorted names that were ignorable but unused (for a log line).
    """
    unknown = [n for n in self.unused() if not ignorable(n)]
    problems = []
    if self.missing:
      problems.append(f"missing ({len(self.missing)}):\n  " + "\n  ".join(self.missing))
    if self.misshaped:
      problems.append(f"mis-shaped ({len(self.misshaped)}):\n  " + "\n  ".join(self.misshaped))
    if unknown:
      problems.append(f"unknown ({len(unknown)}):\n  " + "\n  ".join(unknown))
    if problems:
      raise ConversionError(f"{self.origin}: tensors do not fit the model\n"
                            + "\n".join(problems))
    return [n for n in self.unused() if ignorable(n)]
