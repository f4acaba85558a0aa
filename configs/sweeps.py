r"""Sweeps: each function returns {run name: {dotted config key: value}}.

Run one (each run trains in ROOT/<name>/; finished runs are skipped on a re-run):
  python -m interbert_jax.sweep --config=configs/pretrain.py:tiny \
      --sweep=configs/sweeps.py:paper --root=workdirs/paper --set total_steps=1500
  python -m interbert_jax.report workdirs/paper

Keys are the ones `--config.KEY=VALUE` takes (configs/pretrain.py); an empty dict is the
base config itself.
"""


def paper():
  """The InterBERT paper's ablations (arXiv 2003.13198) plus hard ITM negatives."""
  return {
      # The model as configured.
      "interbert": {},
      # No extraction streams: the interaction module's outputs feed the heads directly.
      "single_stream_only": {"model.text_stream.layers": 0, "model.image_stream.layers": 0},
      # No interaction module: text and image only meet in the pooled ITM fusion.
      "two_stream_only": {"model.single_stream.layers": 0},
      # BERT's independent 15% token masking instead of one masked segment.
      "msm_token": {"data.msm.strategy": "token", "data.msm.token_prob": 0.15},
      # Independent 15% region masking instead of IoU-grouped regions.
      "mrm_independent": {"data.mrm.strategy": "independent", "data.mrm.independent_prob": 0.15},
      # No ITM loss. The data keep their 50% mismatched pairs, so eval MSM/MRM are measured
      # on the same pairs as every other run (and eval ITM shows an untrained head).
      "no_itm": {"loss.itm_weight": 0.0},
      # Pooled text and image combined by sum instead of product.
      "fusion_sum": {"model.fusion": "sum"},
      # Half of the ITM negatives are captions of one of the 8 images nearest by region
      # features (data/itm_negatives.py); its eval ITM is measured on such pairs too.
      "hard_negatives": {"data.itm_negatives": "hard", "data.hard_negative_prob": 0.5,
                         "data.hard_negative_k": 8},
  }
