"""First contact: the paths a new user takes, with the defaults, through the CLIs.

- the default config trains on a 2x2x2 mesh of 8 devices, start-up MFU matmul included;
- names that become paths (`--split`, run names) are names: anything else is refused
  before anything is touched; an existing split / export / converted file is replaced only
  with --overwrite;
- one trainer per workdir: a second one is refused naming the holder; a killed run's lock
  is taken over with a warning;
- THE TABLE: every input a user can get wrong ends in exit 2, exactly one `error:` line (the
  last one), no traceback, and the files that existed before are byte-identical after;
- nothing accepted silently: 0 captions, captions longer than text_len, a BOM.

Unwritable paths: as root (CI) permission bits do not stop writes, so the directory is made
immutable (`chattr +i`), which stops root too; the test is skipped where chattr cannot.
"""
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from interbert_jax.checkpoints import workdir_lock
from interbert_jax.data import schema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_formats import (CAPTIONS, VOCAB, butd_line, make_images,  # noqa: E402
                               write_captions, write_lines)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small shapes for the trainer runs whose checkpoint the table corrupts (a real run, the
# defaults otherwise: no flag that skips a start-up path).
SMALL = ["--config.model.hidden_size=32", "--config.model.pooler_dim=32",
         "--config.model.single_stream.layers=1", "--config.model.text_stream.layers=1",
         "--config.model.image_stream.layers=1"]


def _env(devices=1):
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
              TF_CPP_MIN_LOG_LEVEL="2",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0")


def _run(args, *, devices=1, prefix=(), timeout=600):
  return subprocess.run([*prefix, sys.executable, "-m", *args], cwd=REPO, env=_env(devices),
                        capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(proc, rc=2, *needles):
  err = proc.stderr
  assert proc.returncode == rc, f"rc {proc.returncode}\n{err[-3000:]}"
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]
  assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  return errors[0]


def _tree_digest(path):
  """{relative path: sha256} of every file under `path` (or of `path` itself)."""
  path = str(path)
  if os.path.isfile(path):
    return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
  out = {}
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), path) + "/"] = "dir"
  return out


@contextlib.contextmanager
def _immutable(path):
  """`path` (a directory) unwritable for everyone, root included."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    try:
      yield
    finally:
      os.chmod(path, 0o755)
    return
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
    pytest.skip("running as root and chattr +i is not available here: no unwritable dir")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", str(path)], check=True)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A BUTD TSV world (F=6, C=5), its captions, the vocab, and a dataset prepared from it
  with a train and a validation split."""
  d = tmp_path_factory.mktemp("world")
  images = make_images(4)
  tsv = write_lines(d / "feats.tsv", [butd_line(im) for im in images])
  caps = write_captions(d / "caps.jsonl")
  vocab = write_lines(d / "vocab.txt", VOCAB)
  data = d / "data"
  for split in ("train", "validation"):
    proc = _run(["interbert_jax.data.prepare", "--format=butd_tsv", f"--features={tsv}",
                 f"--captions={caps}", f"--vocab={vocab}", f"--output_dir={data}",
                 f"--split={split}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(dir=d, tsv=tsv, caps=caps, vocab=vocab, data=str(data), images=images)


def _prepare(world, *extra, captions=None, features=None, prefix=()):
  return _run(["interbert_jax.data.prepare", "--format=butd_tsv",
               f"--features={features or world['tsv']}",
               f"--captions={captions or world['caps']}", f"--vocab={world['vocab']}",
               *extra], prefix=prefix)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step tiny-shaped run with its checkpoint, and its native and safetensors exports."""
  d = tmp_path_factory.mktemp("trained")
  workdir = d / "run"
  proc = _run(["interbert_jax.main", "--config=configs/pretrain.py:tiny",
               f"--workdir={workdir}", "--config.total_steps=2", "--config.log_every_steps=1",
               "--config.eval_every_steps=0", *SMALL])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = dict(workdir=workdir, step_dir=workdir / "checkpoints" / "2")
  for fmt in ("native", "safetensors"):
    out[fmt] = d / f"export_{fmt}"
    proc = _run(["interbert_jax.export", f"--workdir={workdir}", f"--output={out[fmt]}",
                 f"--format={fmt}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def _copy(src, dst):
  shutil.copytree(src, dst) if os.path.isdir(src) else shutil.copy(src, dst)
  return dst


def _largest_file(root):
  return max((os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs),
             key=os.path.getsize)


def _truncate_largest(root):
  biggest = _largest_file(root)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  return biggest


# ------------------------------------------------------------------------------ the defaults


def test_default_config_trains_on_a_2x2x2_mesh(tmp_path):
  """`configs/pretrain.py:tiny` as shipped (only shorter) on 8 devices, data x fsdp x
  tensor = 2 x 2 x 2: the MFU denominator is measured at start-up, outside the mesh."""
  workdir = tmp_path / "run"
  proc = _run(["interbert_jax.main", "--config=configs/pretrain.py:tiny",
               f"--workdir={workdir}", "--config.mesh.data=2", "--config.mesh.fsdp=2",
               "--config.mesh.tensor=2", "--config.total_steps=4",
               "--config.log_every_steps=2", "--config.eval_every_steps=4",
               "--config.eval_batches=1"], devices=8)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "(measured matmul)" in proc.stderr and "'tensor': 2" in proc.stderr
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  assert all(0 < r["mfu"] <= 1 for r in rows if "mfu" in r)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]


# ------------------------------------------------------------------------------ one run per workdir


def test_second_trainer_on_a_workdir_is_refused(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with workdir_lock.WorkdirLock(str(workdir)):      # a live trainer: this process
    before = _tree_digest(workdir)
    proc = _run(["interbert_jax.main", "--config=configs/pretrain.py:tiny",
                 f"--workdir={workdir}", "--config.total_steps=2", *SMALL])
    _assert_one_line_error(proc, 2, "is in use by another trainer", f"pid {os.getpid()}")
    assert _tree_digest(workdir) == before


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
  workdir = tmp_path / "run"
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  workdir.mkdir()
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"host": "elsewhere", "pid": dead.pid, "started": "yesterday"}))
  proc = _run(["interbert_jax.main", "--config=configs/pretrain.py:tiny",
               f"--workdir={workdir}", "--config.total_steps=2", "--config.log_every_steps=1",
               "--config.eval_every_steps=0", *SMALL])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f"taking over a stale lock (pid {dead.pid} on host elsewhere, started yesterday)"
          in proc.stderr)
  assert (workdir / workdir_lock.LOCK_FILE).read_text() == ""     # released on exit


def test_heartbeat_lock_for_object_stores(tmp_path):
  """The gs:// form (no flock), exercised on a local path."""
  a = workdir_lock.WorkdirLock(str(tmp_path), use_flock=False, heartbeat_seconds=0.05,
                               stale_seconds=0.5).acquire()
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()}"):
    workdir_lock.WorkdirLock(str(tmp_path), use_flock=False, heartbeat_seconds=0.05,
                             stale_seconds=0.5).acquire()
  a.release()
  b = workdir_lock.WorkdirLock(str(tmp_path), use_flock=False, heartbeat_seconds=0.05)
  b.acquire().release()                                  # a released lock is free
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"host": "other", "pid": 1, "started": "then", "heartbeat": 0}))
  c = workdir_lock.WorkdirLock(str(tmp_path), use_flock=False, heartbeat_seconds=0.05)
  c.acquire().release()                                  # no heartbeat for ages: stale


# ------------------------------------------------------------------------------ the table


def _cases(world, trained, tmp):
  """(name, command (module + args), files that must not change, needles of the error
  line, prefix) for every input of the table. Built lazily: each needs its own files."""
  data = world["data"]
  parent = os.path.dirname(data)
  outside = tmp / "outside"
  outside.mkdir(exist_ok=True)
  (outside / "keep.txt").write_text("the user's file\n")
  prep = lambda *a, captions=None, features=None: [  # noqa: E731
      "interbert_jax.data.prepare", "--format=butd_tsv",
      f"--features={features or world['tsv']}", f"--captions={captions or world['caps']}",
      f"--vocab={world['vocab']}", *a]
  cases = {
      "split empty": (prep(f"--output_dir={data}", "--split="), [data], ["--split=''"]),
      "split ..": (prep(f"--output_dir={data}", "--split=.."), [parent], ["--split='..'"]),
      "split absolute": (prep(f"--output_dir={data}", f"--split={outside}"), [outside],
                         ["not a plain name"]),
      "split exists": (prep(f"--output_dir={data}", "--split=train"), [data],
                       ["split 'train' exists", "--overwrite"]),
      "unknown config key": (["interbert_jax.main", "--config=configs/pretrain.py:tiny",
                              "--config.model.fusoin=sum", f"--workdir={tmp / 'w'}"], [],
                             ["--config.model.fusoin=sum", 'did you mean "fusion"']),
  }
  latin1 = tmp / "latin1.jsonl"
  latin1.write_bytes(b'{"image_id": "img0", "caption": "a caf\xe9"}\n')
  cases["captions not UTF-8"] = (prep(f"--output_dir={data}", "--split=more",
                                      captions=str(latin1)), [data],
                                 ["latin1.jsonl:line 1", "not UTF-8"])
  cases["split named like a dataset file"] = (
      prep(f"--output_dir={data}", "--split=train_captions.npz"), [data],
      ["name of a dataset file"])
  # Zero captions: a captions file whose lines name no caption.
  empty = write_lines(tmp / "empty.jsonl", [""])
  cases["zero captions"] = (prep(f"--output_dir={tmp / 'zero'}", captions=empty), [],
                            ["no captions read"])
  # Checkpoints and exports.
  ckpt = _copy(trained["step_dir"], tmp / "ckpt_trunc")
  shutil.copy(trained["workdir"] / "config.json", tmp / "config.json")   # its config, above
  truncated = _truncate_largest(ckpt / "params")
  deleted = _copy(trained["step_dir"], tmp / "ckpt_deleted")
  os.remove(_largest_file(deleted / "params"))      # a data file of the tensors
  work = tmp / "work_trunc"
  _copy(trained["workdir"], work)
  _truncate_largest(work / "checkpoints" / "2" / "params")
  work_del = tmp / "work_deleted"
  _copy(trained["workdir"], work_del)
  os.remove(_largest_file(work_del / "checkpoints" / "2" / "params"))
  native_trunc = _copy(trained["native"], tmp / "native_trunc")
  _truncate_largest(native_trunc / "params")
  st = _copy(trained["safetensors"], tmp / "st_trunc")
  with open(st / "model.safetensors", "r+b") as f:
    f.truncate(os.path.getsize(st / "model.safetensors") // 2)
  native_del = _copy(trained["native"], tmp / "native_deleted")
  os.remove(_largest_file(native_del / "params"))
  existing = tmp / "existing.safetensors"
  existing.write_bytes(b"an older conversion")
  cases.update({
      "export truncated checkpoint": (
          ["interbert_jax.export", f"--workdir={work}", f"--output={tmp / 'e1'}"], [work],
          ["cannot be read"]),
      "export deleted checkpoint file": (
          ["interbert_jax.export", f"--workdir={work_del}", f"--output={tmp / 'e2'}"],
          [work_del], ["cannot be read"]),
      "convert truncated export": (
          ["interbert_jax.convert", "to_reference", f"--checkpoint={native_trunc}",
           f"--output={tmp / 'ref3.safetensors'}"], [native_trunc], ["cannot restore params"]),
      "evaluate truncated checkpoint": (
          ["interbert_jax.evaluate", "retrieval", f"--checkpoint={ckpt}", f"--data={data}"],
          [ckpt], ["--checkpoint=", os.path.basename(os.path.dirname(truncated))]),
      "evaluate deleted checkpoint file": (
          ["interbert_jax.evaluate", "retrieval", f"--checkpoint={deleted}",
           f"--data={data}"], [deleted], ["--checkpoint="]),
      "evaluate truncated safetensors": (
          ["interbert_jax.evaluate", "retrieval", f"--checkpoint={st}", f"--data={data}"],
          [st], ["model.safetensors: cannot be read"]),
      "convert truncated safetensors": (
          ["interbert_jax.convert", "to_reference", f"--checkpoint={st}",
           f"--output={tmp / 'ref.safetensors'}"], [st], ["model.safetensors: cannot be read"]),
      "convert deleted export file": (
          ["interbert_jax.convert", "to_reference", f"--checkpoint={native_del}",
           f"--output={tmp / 'ref2.safetensors'}"], [native_del], ["cannot restore params"]),
      "convert output exists": (
          ["interbert_jax.convert", "to_reference", f"--checkpoint={trained['native']}",
           f"--output={existing}"], [existing], ["exists", "--overwrite"]),
      "export output exists": (
          ["interbert_jax.export", f"--workdir={trained['workdir']}",
           f"--output={trained['native']}"], [trained["native"]],
          ["exists and is not empty", "--overwrite"]),
      # Its image projection was trained on raw features (tiny's feature_norm=none).
      "init_from with another feature_norm": (
          ["interbert_jax.main", "--config=configs/pretrain.py:tiny",
           f"--workdir={tmp / 'other_norm'}", "--config.total_steps=2", *SMALL,
           f"--config.init_from={trained['native']}",
           "--config.model.feature_norm=standardize"], [trained["native"]],
          ["trained with model.feature_norm='none'",
           "--config.model.feature_norm=none"]),
  })
  return cases


TABLE = ["split empty", "split ..", "split absolute", "split exists",
         "split named like a dataset file", "captions not UTF-8", "unknown config key",
         "zero captions", "export truncated checkpoint", "export deleted checkpoint file",
         "convert truncated export", "evaluate truncated checkpoint",
         "evaluate deleted checkpoint file", "evaluate truncated safetensors",
         "convert truncated safetensors", "convert deleted export file",
         "convert output exists", "export output exists",
         "init_from with another feature_norm"]


@pytest.fixture(scope="module")
def cases(world, trained, tmp_path_factory):
  return _cases(world, trained, tmp_path_factory.mktemp("cases"))


@pytest.mark.parametrize("name", TABLE)
def test_user_error_is_one_line(name, cases):
  args, keep, needles = cases[name]
  before = {str(p): _tree_digest(p) for p in keep}
  proc = _run(args)
  _assert_one_line_error(proc, 2, *needles)
  assert {str(p): _tree_digest(p) for p in keep} == before, name


def test_unwritable_paths_are_one_line(world, trained, tmp_path):
  """No permission: the trainer's workdir, prepare's output, export's and convert's
  --output, each under a directory nobody may write."""
  locked = tmp_path / "locked"
  locked.mkdir()
  (locked / "keep.txt").write_text("kept\n")
  with _immutable(locked):
    before = _tree_digest(locked)
    runs = {
        "workdir": _run(["interbert_jax.main", "--config=configs/pretrain.py:tiny",
                         f"--workdir={locked / 'run'}", "--config.total_steps=2", *SMALL]),
        "prepare": _run(["interbert_jax.data.prepare", "--format=butd_tsv",
                         f"--features={world['tsv']}", f"--captions={world['caps']}",
                         f"--vocab={world['vocab']}", f"--output_dir={locked / 'data'}"]),
        "export": _run(["interbert_jax.export", f"--workdir={trained['workdir']}",
                        f"--output={locked / 'export'}"]),
        "convert": _run(["interbert_jax.convert", "to_reference",
                         f"--checkpoint={trained['native']}",
                         f"--output={locked / 'ref.safetensors'}"]),
    }
    for name, proc in runs.items():
      line = _assert_one_line_error(proc, 2, str(locked))
      assert "not permitted" in line or "permission denied" in line, (name, line)
    assert _tree_digest(locked) == before


def test_disk_full_during_prepare_is_one_line_and_leaves_nothing(world, tmp_path):
  """Every write past 20 KB fails (RLIMIT_FSIZE: EFBIG, root too) while shards are
  written; the output directory keeps what it had."""
  out = tmp_path / "data"
  shutil.copytree(world["data"], out)
  before = _tree_digest(out)
  big = make_images(1000, seed=3)   # ~200 KB of records
  tsv = write_lines(tmp_path / "big.tsv", [butd_line(im) for im in big])
  caps = write_captions(tmp_path / "big.jsonl", [(im["image_id"], "a dog") for im in big])
  proc = _prepare(world, f"--output_dir={out}", "--split=big", captions=caps, features=tsv,
                  prefix=["bash", "-c", 'ulimit -f 20 && exec "$@"', "bash"])
  _assert_one_line_error(proc, 2, "File too large", str(out))
  assert _tree_digest(out) == before


def test_overwrite_replaces_the_split_and_export(world, trained, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(world["data"], data)
  validation = _tree_digest(data / "validation")
  caps = write_captions(tmp_path / "one.jsonl", [("img1", "a cat")])
  proc = _prepare(world, f"--output_dir={data}", "--split=train", "--overwrite",
                  captions=caps)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert schema.read_metadata(str(data))["splits"]["train"]["captions"] == 1
  assert _tree_digest(data / "validation") == validation        # the other split is kept
  export = _copy(trained["safetensors"], tmp_path / "export")
  proc = _run(["interbert_jax.export", f"--workdir={trained['workdir']}",
               f"--output={export}", "--overwrite"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(export)) == ["config.json", "export.json", "params"]
  other = tmp_path / "not_an_export"
  other.mkdir()
  (other / "thesis.tex").write_text("years of work\n")
  proc = _run(["interbert_jax.export", f"--workdir={trained['workdir']}",
               f"--output={other}", "--overwrite"])
  _assert_one_line_error(proc, 2, "not an export")
  assert (other / "thesis.tex").read_text() == "years of work\n"


# ------------------------------------------------------------------------------ nothing silent


def test_long_captions_and_bom_are_reported(world, tmp_path):
  long_caption = " ".join(["dog"] * 10_000)
  caps = write_captions(tmp_path / "caps.jsonl", CAPTIONS + [("img1", long_caption)])
  with open(world["tsv"], "rb") as f:
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + f.read())   # a Windows editor's
  out = tmp_path / "data"
  proc = _prepare(world, f"--output_dir={out}", captions=caps,
                  features=str(tmp_path / "bom.tsv"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("note: 1 of 5 captions are longer than --text_len=36 tokens ([CLS] and [SEP] "
          "included; the longest has 10002)") in proc.stdout
  report = json.loads(proc.stdout.split("report: ")[1])
  assert report["captions_over_text_len"] == 1 and report["images"] == 4
  images = schema.open_images(str(out), "train")
  assert images[0]["image_id"] == "img0"                         # the BOM is not in the id
  proc = _run(["interbert_jax.data.validate", str(out)])
  assert proc.returncode == 0, proc.stderr
  assert "1 of 5 captions are longer than text_len=36" in proc.stdout


def test_validate_names_a_split_without_captions(world, tmp_path):
  out = tmp_path / "data"
  shutil.copytree(world["data"], out, ignore=shutil.ignore_patterns("validation*"))
  images = [dict(im, features=im["features"]) for im in world["images"]]
  meta = schema.read_metadata(str(out))
  schema.write_split(str(out), "test", images, {}, log_every=0,
                     **{k: meta[k] for k in schema.DATASET_KEYS})
  proc = _run(["interbert_jax.data.validate", str(out)])
  assert proc.returncode == 1
  assert "test_captions.npz: no captions" in proc.stderr
