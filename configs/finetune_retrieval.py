"""Retrieval fine-tuning (interbert_jax/tasks/retrieval.py) from a pretrained checkpoint.

  python -m interbert_jax.main --config=configs/finetune_retrieval.py:tiny \
      --config.init_from=workdirs/tiny/checkpoints/3000 --workdir=workdirs/tiny_retrieval
  python -m interbert_jax.main --config=configs/finetune_retrieval.py:base \
      --config.init_from=OUT --config.data.dir=/data/flickr30k_prepared --workdir=...

Every key is the pretraining config's (configs/pretrain.py); this file sets the values
fine-tuning changes: four pairs per caption with hard negatives from the K nearest
images, warm-up then constant LR with x0.1 at the configured epochs, weight EMA 0.9999.
"""
from configs import pretrain


def get_config(arg="tiny"):
  variant = arg or "tiny"
  c = pretrain.get_config(variant)
  c.task = "retrieval"
  c.ema_decay = 0.9999
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.finetune.num_neighbours = 10
  o = c.optimizer
  o.schedule = "step_decay"
  o.bert_lr_multiplier = 1.0           # every weight is pretrained now
  if variant == "tiny":
    # The synthetic retrieval set's own train split (data/synthetic.py ensure_retrieval:
    # 2,000 images the pretraining world never showed) x 5 captions = 10,000 anchors =
    # 40,000 pairs = 1,250 steps per epoch; x0.1 at epoch 1.5 = step 1,875.
    c.batch_size = 32                  # 8 captions x 4 pairs
    # Chosen on the retrieval set's validation images (IR R@1 on 50 images: zero-shot 51.2;
    # 1,000 steps 62.8, 2,000 steps 78.0, 3,000 steps 75.6; LR 3e-4 at 1,000: 58.0).
    c.total_steps = 2_000              # 1.6 epochs, ~2.5 min on 2 CPU cores
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay_epochs = (1.5,)
    c.log_every_steps = 50
    c.eval_every_steps = 1_000
    c.eval_batches = 16
    c.checkpoint_every_steps = 1_000
  else:
    # The reference's recipe (../shared/SPEC.md section 4): LR 4e-5, 20 epochs, batch 64
    # captions (256 pairs), EMA 0.9999. The decay epochs are not given there: x0.1 at 12
    # and 16 is our choice. Flickr30K train: 29,000 images x 5 = 145,000 captions.
    c.batch_size = 256
    c.total_steps = 20 * 145_000 * 4 // 256
    c.optimizer.learning_rate = 4e-5
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay_epochs = (12, 16)
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
  return c
