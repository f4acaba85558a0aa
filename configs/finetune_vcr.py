"""VCR-style multiple choice (interbert_jax/tasks/multiple_choice.py): Q->A and QA->R.

  python -m interbert_jax.main --config=configs/finetune_vcr.py:tiny \
      --config.init_from=workdirs/tiny/checkpoints/3000 --workdir=workdirs/tiny_vcr
  python -m interbert_jax.main --config=configs/finetune_vcr.py:base --config.init_from=OUT \
      --config.data.dir=/data/vcr_prepared --workdir=...   # data: python -m interbert_jax.data.vcr

`data.dir` = "" uses the synthetic world's images with synthetic questions
(data/synthetic_choices.py). Keys: configs/pretrain.py.
"""
from configs import pretrain


def get_config(arg="tiny"):
  variant = arg or "tiny"
  c = pretrain.get_config(variant)
  c.task = "multiple_choice"
  c.ema_decay = 0.9999
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  o = c.optimizer
  o.schedule = "step_decay"
  o.bert_lr_multiplier = 1.0
  if variant == "tiny":
    c.data.text_len = 24               # [CLS] Q A [SEP] R [SEP] of the synthetic questions
    c.batch_size = 16                  # questions' examples (x 4 choices)
    c.total_steps = 500                # 2 epochs of 2,000 images x 2 modes
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay_epochs = (1.5,)
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.eval_batches = 0                 # the whole validation split (200 images x 2 modes)
    c.checkpoint_every_steps = 250
  else:
    # ../shared/SPEC.md section 4: LR 2e-5, batch 32, 5 epochs, EMA; up to 100 regions.
    # VCR train: 212,923 questions x 2 modes.
    c.data.text_len = 128
    c.data.max_regions = 100
    c.batch_size = 32
    c.total_steps = 5 * 2 * 212_923 // 32
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay_epochs = (4,)    # x0.1 for the last epoch: our choice (not in SPEC)
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.eval_batches = 0
    c.checkpoint_every_steps = 2_000
  return c
