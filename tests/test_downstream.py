"""What the README's quick-start pretraining run is worth downstream (issue 9's targets).

From the session's shared quick-start run (`tiny_pretrain_run`, conftest.py; 3,000 steps):
- zero-shot image and text retrieval R@1 on the synthetic test split (200 images x 1,000
  captions) are at least 5x chance (1/200);
- retrieval fine-tuning (`configs/finetune_retrieval.py:tiny` as shipped, 2,000 steps on the
  retrieval set's own train images) -> export (EMA weights) -> evaluate raises image
  retrieval R@1 on the same split by at least 10 points;
- multiple choice (`configs/finetune_vcr.py:tiny`, 300 steps): Q->A >= 0.6 on the test
  split (chance 0.25);
- text classification (`configs/finetune_text.py:tiny`, as shipped): test accuracy clearly
  above the majority class.

Honest: the fine-tuning lengths were chosen on *validation* metrics (retrieval: IR R@1 on
50 of the retrieval set's validation images, zero-shot 51.2, 1,000 / 2,000 / 3,000 steps
62.8 / 78.0 / 75.6; multiple choice: the trainer's eval, Q->A 0.545 / 0.595 / 0.815 at 100 /
200 / 300 steps); every bound is checked on the *test* split. Measured test figures are
next to each bound.
"""
import collections
import json
import os

import pytest

from configs import finetune_retrieval
from configs import finetune_text
from configs import pretrain
from interbert_jax import evaluate
from interbert_jax import export
from interbert_jax.data import synthetic
from interbert_jax.data import text_classification
from interbert_jax.evaluation import finetuned
from tests.conftest import train

IMAGES = 200           # the whole synthetic test split
MC_STEPS = 300


def _short(steps):
  return [f"--config.total_steps={steps}", f"--config.eval_every_steps={steps}",
          f"--config.checkpoint_every_steps={steps}", f"--config.log_every_steps={steps // 4}"]


def _retrieval(checkpoint, output):
  data = synthetic.ensure_retrieval(pretrain.get_config("tiny"))
  assert evaluate.main(["retrieval", f"--checkpoint={checkpoint}", f"--data={data}",
                        "--split=test", f"--output={output}", "--block_images=20",
                        "--block_captions=100"]) == 0
  return json.loads(open(output).read())


@pytest.fixture(scope="module")
def zero_shot(tiny_pretrain_run, tmp_path_factory):
  return _retrieval(tiny_pretrain_run["step_dir"],
                    tmp_path_factory.mktemp("zero_shot") / "retrieval.json")


def test_zero_shot_retrieval_is_five_times_chance(zero_shot):
  """Measured: IR R@1 24.9, TR R@1 29.5 (chance 0.5: 50x and 59x; R@1 is bounded well below
  100 here: images holding the same objects cannot be told apart)."""
  print("zero-shot retrieval, test split:", zero_shot)
  assert zero_shot["images"] == IMAGES and zero_shot["captions"] == 5 * IMAGES
  assert zero_shot["chance_ir_r1"] == pytest.approx(100 / IMAGES)
  assert zero_shot["ir_r1"] >= 5 * zero_shot["chance_ir_r1"], zero_shot
  assert zero_shot["tr_r1"] >= 5 * zero_shot["chance_tr_r1"], zero_shot


def test_retrieval_finetuning_adds_ten_points(tiny_pretrain_run, zero_shot, tmp_path):
  """Measured (2,000 steps, the shipped length): group_acc 0.961; test IR R@1 24.9 -> 37.1
  (+12.2), TR R@1 29.5 -> 37.5."""
  workdir = tmp_path / "retrieval"
  steps = finetune_retrieval.get_config("tiny").total_steps
  train("configs/finetune_retrieval.py:tiny", workdir,
        f"--config.init_from={tiny_pretrain_run['step_dir']}")
  evals = [json.loads(l) for l in open(workdir / "metrics.jsonl") if "eval_group_acc" in l]
  assert evals[-1]["step"] == steps and evals[-1]["eval_group_acc"] >= 0.85, evals  # chance 0.25
  info = export.export(str(workdir), str(tmp_path / "export"))
  assert info["weights"] == "ema" and info["step"] == steps
  tuned = _retrieval(tmp_path / "export", tmp_path / "retrieval.json")
  print("fine-tuned retrieval, test split:", tuned)
  assert tuned["ir_r1"] >= zero_shot["ir_r1"] + 10, (zero_shot, tuned)


def test_multiple_choice_after_finetuning(tiny_pretrain_run, tmp_path):
  workdir = tmp_path / "vcr"
  train("configs/finetune_vcr.py:tiny", workdir,
        f"--config.init_from={tiny_pretrain_run['step_dir']}", *_short(MC_STEPS))
  got = finetuned.evaluate(str(workdir), task_name="multiple_choice", split="test")
  assert got["qa_acc"] >= 0.6, got          # chance 0.25


def test_text_classification_beats_the_majority_class(tiny_pretrain_run, tmp_path):
  workdir = tmp_path / "text"
  train("configs/finetune_text.py:tiny", workdir,
        f"--config.init_from={tiny_pretrain_run['step_dir']}")
  config = finetune_text.get_config("tiny")
  rows = text_classification.read_tsv(os.path.join(text_classification.data_dir(config),
                                                   "test.tsv"))
  # Evaluation scores full batches only: a batch size dividing the split scores every row.
  got = finetuned.evaluate(str(workdir), task_name="classification", split="test",
                           batch_size=40)
  majority = max(collections.Counter(r[0] for r in rows).values()) / len(rows)
  assert got["examples"] == len(rows)
  assert got["cls_acc"] >= majority + 0.3, (got, majority)
