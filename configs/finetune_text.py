"""Text-only classification (interbert_jax/tasks/classification.py): GLUE-style TSV through
the text path alone, [CLS] -> classifier; accuracy and macro F1.

  python -m interbert_jax.main --config=configs/finetune_text.py:tiny \
      --config.init_from=workdirs/tiny/checkpoints/3000 --workdir=workdirs/tiny_text
  python -m interbert_jax.main --config=configs/finetune_text.py:base --config.init_from=OUT \
      --config.data.dir=/data/glue/SST-2 --config.data.eval_split=dev \
      --config.finetune.vocab=$BERT/vocab.txt --workdir=...

`data.dir` = "": a synthetic set (the synthetic world's captions labelled with the
attribute of the first object they name; data/text_classification.py).
"""
from configs import pretrain


def get_config(arg="tiny"):
  variant = arg or "tiny"
  c = pretrain.get_config(variant)
  c.task = "classification"
  c.ema_decay = 0.0                    # GLUE fine-tuning is a few epochs; no EMA by default
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  o = c.optimizer
  o.schedule = "linear_decay"          # BERT's GLUE recipe: warm-up, then linear to 0
  o.bert_lr_multiplier = 1.0
  o.warmup_fraction = 0.1
  if variant == "tiny":
    c.batch_size = 32
    c.total_steps = 250                # 2 epochs of 4,000 synthetic captions
    c.optimizer.learning_rate = 1e-4
    c.log_every_steps = 25
    c.eval_every_steps = 125
    c.eval_batches = 0                 # the whole validation split (400 captions)
    c.checkpoint_every_steps = 125
  else:
    c.data.text_len = 128
    c.batch_size = 32
    c.total_steps = 3 * 67_349 // 32   # 3 epochs of SST-2
    c.optimizer.learning_rate = 2e-5
    c.log_every_steps = 100
    c.eval_every_steps = 1_000
    c.eval_batches = 0
    c.checkpoint_every_steps = 1_000
  return c
