"""InterBERT pretraining configs: the single source of truth for model, data and training.

Run:
  python -m interbert_jax.main --config=configs/pretrain.py:tiny --workdir=workdirs/tiny
  python -m interbert_jax.main --config=configs/pretrain.py:base --workdir=gs://.../run \
      --config.data.dir=/data/cc_prepared --config.init_from=/ckpt/bert_base_converted

Variants: `tiny` (CPU seconds, synthetic data), `small` (the paper's recipe scaled down: 3
single-stream + 3 text layers from the bundled real BERT, a new 3-layer image stream, BERT
weights at the full learning rate and pooler biases at 1 (docs/plateau.md); synthetic data
in BERT's vocabulary), `base` (the
released 6/6/6 model, 157,021,565 parameters with heads), `large` (1024 hidden, 24-layer
text path).
Override any key with --config.KEY=VALUE (e.g. --config.model.fusion=sum).
A named synthetic world (configs/synthetic_worlds.py): `configs/pretrain.py:tiny,preset=hard`.
"""
import ml_collections

from configs import synthetic_worlds


def _stack(layers, heads, mlp_dim, hidden_dropout=0.1, attention_dropout=0.1):
  return ml_collections.ConfigDict(dict(
      layers=layers, heads=heads, mlp_dim=mlp_dim,
      hidden_dropout=hidden_dropout, attention_dropout=attention_dropout))


def model_config(variant="base"):
  """The model's architecture (docs/reference_notes.md, Model facts 1). Released InterBERT is `base`."""
  m = ml_collections.ConfigDict()
  m.vocab_size = 30522
  m.vocab_pad_multiple = 1             # word table / MSM bias rows rounded up to this; set it
                                       # to the fsdp size on big meshes (docs/performance.md).
  m.hidden_size = 768
  m.max_position_embeddings = 512
  m.type_vocab_size = 2
  m.feature_dim = 2048                 # Faster R-CNN region feature size.
  m.location_dim = 5                   # [x1/W, y1/H, x2/W, y2/H, area/(W*H)].
  m.num_region_classes = 1601          # Visual Genome detector classes (MRM targets).
  # "rms_standardize": each region's features divided by their root mean square (no
  # per-image scale left), then standardised per channel with the training split's
  # statistics (recorded by prepare), frozen in the parameters, so that any detector's
  # non-negative, heavy-tailed, offset features look alike to the model (docs/plateau.md).
  # "standardize": per channel only (folds into the released layout: convert to_reference).
  # "none": raw features, the released model.
  m.feature_norm = "rms_standardize"
  m.pooler_dim = 1024
  m.pooler_bias_init = 0.0             # initial pooler bias (BERT's 0); > 0 starts the ReLU units alive (docs/plateau.md).
  # Interaction module over [image ; text], then the two extraction streams.
  m.single_stream = _stack(6, 12, 3072)
  m.text_stream = _stack(6, 12, 3072)
  m.image_stream = _stack(6, 8, 3072, hidden_dropout=0.2)
  m.embedding_dropout = 0.1
  m.itm_dropout = 0.1
  m.fusion = "mul"                     # "mul" (released) | "sum".
  m.modality_segments = False          # True: image tokens get segment 0, text 1 (paper figure);
                                       # segment_ids=None then means 1 for every text token.
  m.mrm_target = "kl"                  # "kl" (detector distribution) | "ce" (argmax) | "regress" (features).
  m.layer_norm_eps = 1e-12
  m.initializer_range = 0.02
  m.dtype = "float32"                  # compute dtype: "float32" | "bfloat16" (params stay float32).
  m.param_dtype = "float32"
  m.scan_layers = False                # nn.scan over the layers of each stack.
  m.remat_policy = "none"              # "none" | "full" | "dots" | "dots_no_batch".
  if variant == "tiny":
    m.vocab_size = 1024
    m.max_position_embeddings = 64
    m.feature_dim = 64
    m.num_region_classes = 64
    # Width 128 (4 heads of 32): at width 64 the synthetic world's MRM stays at chance for
    # 1.5k steps; 128 learns it. Measured ~14 steps/s at batch 32 on 2 CPU cores.
    m.hidden_size = 128
    m.pooler_dim = 128
    m.single_stream = _stack(2, 4, 256)
    m.text_stream = _stack(2, 4, 256)
    m.image_stream = _stack(2, 4, 256, hidden_dropout=0.2)
    # The toy synthetic world's Gaussian features need no standardisation, and with it the
    # tiny model's retrieval fine-tuning gained +5.0 IR R@1 points instead of +12.2
    # (docs/plateau.md): raw features here until that is understood.
    m.feature_norm = "none"
  elif variant == "small":
    # Sizes from the bundled BERT's config.json (interbert_jax/bundled_bert.py) through the
    # converter's own mapping, so config and checkpoint agree by construction; its first 3
    # layers become the single stream, the next 3 the text stream (config.init_from).
    from interbert_jax import bundled_bert  # pylint: disable=g-import-not-at-top
    from interbert_jax.convert import model_configs  # pylint: disable=g-import-not-at-top
    m.feature_dim = 64                 # the tiny synthetic world's shapes (presets may change them)
    m.num_region_classes = 64
    m.pooler_dim = 512                 # the released 1024 : 768, scaled to 384
    m.image_stream = _stack(3, 12, 1536, hidden_dropout=0.2)
    m = model_configs.from_hf_bert(bundled_bert.config(), m, single_stream_layers=3,
                                   text_layers=3, image_layers=3,
                                   origin=bundled_bert.model_dir())
  elif variant == "large":
    m.hidden_size = 1024
    m.pooler_dim = 1024
    m.single_stream = _stack(12, 16, 4096)
    m.text_stream = _stack(12, 16, 4096)
    m.image_stream = _stack(12, 16, 4096, hidden_dropout=0.2)
  elif variant != "base":
    raise ValueError(f"unknown model variant {variant!r}: tiny | base | large")
  return m


def data_config(variant="base"):
  """Input pipeline and InterBERT's masking (docs/reference_notes.md, Model facts 2 and 5)."""
  d = ml_collections.ConfigDict()
  d.dir = ""                           # prepared dataset (interbert_jax.data.prepare); "" = synthetic.
  d.train_split = "train"
  d.eval_split = "validation"
  d.text_len = 36                      # incl. [CLS] and [SEP].
  d.max_regions = 36                   # real regions; +1 global image token in the batch.
  d.adaptive_regions = False           # True: keep 10..100 regions by detector confidence.
  d.min_regions = 10
  d.region_conf_threshold = 0.2
  d.itm_negative_prob = 0.5
  # "random" (reference): a negative takes any other image's caption. "hard": with
  # hard_negative_prob, a caption of one of the hard_negative_k images nearest by cosine of
  # mean region features (interbert_jax/data/itm_negatives.py; cached beside the dataset,
  # or in hard_negative_cache_dir / ~/.cache/interbert_jax/hard_negatives if not writable).
  d.itm_negatives = "random"
  d.hard_negative_prob = 0.5
  d.hard_negative_k = 8
  d.hard_negative_cache_dir = ""
  d.max_msm_targets = 0                # fixed-size MSM position arrays; 0 = text_len (exact).
  d.msm = ml_collections.ConfigDict(dict(
      strategy="span",                 # "span" (reference) | "token" (BERT 15%).
      min_caption_len=4,               # captions shorter than this are not masked.
      num_spans=1,
      max_span_frac=0.0,               # >0: a real cap on span length as a fraction of n.
      token_prob=0.15,
      mask_prob=0.8, random_prob=0.1))  # of targets: [MASK] / random token / unchanged.
  d.mrm = ml_collections.ConfigDict(dict(
      strategy="iou",                  # "iou" (reference) | "independent".
      anchor_prob=0.1, iou_threshold=0.4,
      independent_prob=0.15,
      independent_zero_prob=0.9))      # reference: 90% of independent targets zeroed, 10% kept.
  # Global image token = mean of the region features AFTER MRM zeroing (reference);
  # False: mean of the unmasked features.
  d.global_from_masked = True
  d.prefetch = 2                       # batches built ahead (per worker; docs/data_pipeline.md).
  d.num_threads = 0                    # Grain read threads; 0 = the host's CPU count.
  d.num_workers = 0                    # >0: Grain worker processes instead of threads.
  d.seed = 0
  d.synthetic = ml_collections.ConfigDict(dict(
      num_train_images=20_000, num_validation_images=500, num_test_images=500,
      captions_per_image=2, seed=0,
      max_regions_per_image=0,         # 0 = data.max_regions (every object keeps >= 1 region).
      fill_regions=0,                  # >0: pad every image with clutter to exactly this many regions.
      noise=0.3,                       # region-feature noise std per dim (prototype entries ~ N(0, 1)).
      min_objects=2, max_objects=4,    # named objects per image (uniform; at most 4).
      max_clutter=2,                   # unnamed clutter regions per image (uniform in 0..max).
      spatial_order=True,              # captions name the objects left to right.
      num_object_classes=0,            # >0: objects use only the first N of the 48 classes
      num_attributes=0,                # / of the 12 attributes (0 = the original 24 / 10).
      min_boxes_per_object=1,          # detector regions per object (uniform; overlapping
      max_boxes_per_object=3,          # jittered boxes, IoU >= 0.57; max_regions may trim).
      detector_peak_min=0.5,           # an object region's detector probability of its true
      detector_peak_max=0.9,           # class ~ uniform in [min, max] (lower = flatter).
      partial_caption_prob=0.0,        # chance a caption names only 1..n-1 of n >= 2 objects.
      caption_style="basic",           # synthetic_world.CAPTION_STYLES: "varied" = more templates.
      # "gaussian" (prototype + noise, signed) | "detector": s * exp(0.7 x + offset), entries
      # below feature_sparsity * s zeroed; offset ~ N(feature_offset, 0.3) per channel,
      # s ~ LogNormal(0, image_scale_sigma) per image (synthetic_world.detector_features).
      feature_style="gaussian", feature_offset=-1.0, image_scale_sigma=0.0,
      feature_sparsity=0.0,
      vocab="world",                   # "world" = its own small vocabulary | "bert" = the
                                       # bert-base-uncased one of the bundled BERT (`small`).
      # "en" | "zh" (synthetic_world.LANGUAGES): captions in English words, or Chinese text
      # split one token per character by the BERT tokenizer against a character vocabulary
      # the world generates. Chinese captions are ~2-3x more tokens: the tiny world needs
      # data.text_len=26 in zh (3 objects in the short form need 24 tokens + [CLS], [SEP]).
      language="en",
      dir=""))                         # "" = ~/.cache/interbert_jax/synthetic/<hash>
  if variant in ("tiny", "small"):
    d.text_len = 16
    d.max_regions = 10
    d.synthetic.num_train_images = 2_000
    d.synthetic.num_validation_images = 200
    d.synthetic.num_test_images = 200
    # A world small enough to learn in minutes on a CPU (measured in README): 6 classes
    # x 4 attributes, 1-3 objects, <= 1 clutter region. A masked region group is then
    # pinned down by the caption and its left-to-right place in it (spatial_order).
    # (24 x 10: MRM at chance after 1.5k steps; 12 x 6: ITM 0.77; 8 x 4: ITM 0.91 at 2k.)
    d.synthetic.min_objects = 1
    d.synthetic.max_objects = 3
    d.synthetic.max_clutter = 1
    d.synthetic.num_object_classes = 6
    d.synthetic.num_attributes = 4
    # The reference span (length uniform in [1, n]) hides every object word of a short
    # (~10-word) synthetic caption so often that ITM cannot exceed ~0.91; the real 0.3 n cap
    # (which the reference computes and then ignores) lifts that ceiling to ~0.99.
    d.msm.max_span_frac = 0.3
  if variant == "small":
    d.synthetic.vocab = "bert"          # captions in the bundled BERT's WordPiece ids
  return d


def parse_arg(arg):
  """"VARIANT[,preset=NAME]" -> (variant, preset name or "")."""
  variant, *options = (arg or "").split(",")
  preset = ""
  for option in options:
    key, _, value = option.partition("=")
    if key != "preset":
      raise ValueError(f"config argument {arg!r}: unknown option {option!r} (use "
                       "VARIANT[,preset=NAME])")
    preset = value
  return variant or "tiny", preset


def get_config(arg="tiny"):
  variant, preset = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.model = model_config(variant)
  c.data = data_config(variant)

  c.task = "pretrain"                  # interbert_jax.tasks.TASKS: pretrain | retrieval |
                                       # multiple_choice | classification (configs/finetune_*.py).
  c.seed = 0
  c.total_steps = 91_000               # ~15 epochs of Conceptual Captions at batch 512.
  c.batch_size = 512                   # global, in examples.
  c.microbatches = 1                   # gradient accumulation.
  c.log_every_steps = 100
  c.eval_every_steps = 5_000
  c.eval_batches = 20
  # Zero-shot image-text retrieval (interbert_jax/evaluation/retrieval.py) on the first
  # eval_retrieval_images images of data.eval_split x all their captions, every
  # eval_retrieval_every_steps steps (0 = off) and at the last step: eval_ir_r1/5/10,
  # eval_tr_r1/5/10 (percent) in metrics.jsonl. N images cost N x (captions per image) x N
  # model calls: 1000 images x 5 captions = 5M pairs, so keep N small for frequent evals.
  c.eval_retrieval_every_steps = 0
  c.eval_retrieval_images = 1_000     # 0 = every image of the split.
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 3
  c.init_from = ""                     # a converted checkpoint (interbert_jax.convert) to start from.
  c.peak_flops_per_device = 0.0        # MFU denominator (FLOP/s); 0 = a matmul measured on one device at start-up.
  # Exponential moving average of the weights, kept in the train state and checkpoints
  # (item `ema_params`) and used for evaluation; 0 = off. Decay after t updates:
  # min(ema_decay, (1 + t) / (10 + t)). Fine-tuning configs use 0.9999.
  c.ema_decay = 0.0

  # Fine-tuning tasks (config.task != "pretrain"); interbert_jax/tasks/.
  c.finetune = ml_collections.ConfigDict(dict(
      num_neighbours=10,               # retrieval: hard-negative captions come from the K
                                       # nearest images by region-feature similarity.
      labels=(),                       # classification: label names; () = the sorted labels
                                       # of the training TSV.
      vocab="",                        # classification: vocab.txt; "" = <data.dir>/vocab.txt.
      ))

  c.loss = ml_collections.ConfigDict(dict(
      msm_weight=1.0, mrm_weight=1.0, itm_weight=1.0,
      mrm_matched_only=True,           # reference: MRM loss on matched pairs only.
      # > 0: the MSM head runs only at the slots that hold a target, packed per batch shard
      # into this fraction of its [B/shards, P] slots (a step whose targets do not fit runs
      # every slot), training/packed_msm.py. Same loss up to float summation order, so off
      # by default: like optimizer.fused_clipping it moves a run's trajectory at the
      # rounding level, and the documented results are those of the unpacked head. Pays with
      # several examples per batch shard; with one, any long span makes the step fall back
      # (the rate is the logged metric msm_packing_fallback).
      msm_packing=0.0))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=1e-4,              # new weights.
      bert_lr_multiplier=0.1,          # BERT-initialised weights train at 1e-5.
      warmup_fraction=0.1,
      schedule="linear_decay",         # training/optimizer.py SCHEDULES: linear_decay | step_decay.
      decay_epochs=(),                 # step_decay: epochs at which the LR is multiplied by
      decay_factor=0.1,                # decay_factor (after warm-up it is constant otherwise).
      b1=0.9, b2=0.999, eps=1e-6,
      weight_decay=0.01,
      grad_clip_norm=1.0,
      # The same global-norm rule as one scalar factor, which XLA fuses into the Adam
      # passes: the `base` step is ~8% faster on CPU (docs/performance.md). Off by default:
      # clipped steps round differently from optax's, so a run's trajectory (and the
      # documented results) change at the rounding level when it is switched on.
      fused_clipping=False,
      # The reference's BertAdam quirks, off by default.
      bias_correction=True,
      per_tensor_clipping=False,
      reference_decay_mask=False))     # ViLBERT quirk: decay only bias/LayerNorm.

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # ITM plateau warning (docs/plateau.md "The warning"): one absl warning when, after the
  # warm-up, either every log window of `collapse_steps` steps had itm_loss no better than
  # ln 2, itm_logit_std shrunk to `spread_shrink` x its peak (or below `spread_floor`) and
  # at least `dead_image_floor` of the image pooler's units dead (collapse: early), or
  # itm_loss has sat within `tolerance` (relative) of ln 2 for `window_steps` steps
  # whatever the diagnostics (band). It names the rule that tripped, the step,
  # itm_loss, the dead pooler fractions and itm_logit_std. window_steps=0: no warning;
  # collapse_steps=0: no early one.
  c.plateau = ml_collections.ConfigDict(dict(
      window_steps=2_000, tolerance=0.01, collapse_steps=500, spread_shrink=0.5,
      spread_floor=0.01, dead_image_floor=0.1))

  if variant in ("tiny", "small"):
    c.total_steps = 3_000             # ~4 minutes on 2 CPU cores (eval ITM ~0.91, MRM ~0.8).
    c.batch_size = 32
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.eval_batches = 8                # 256 validation pairs: ITM accuracy +-2%.
    c.checkpoint_every_steps = 500
    # Off in the quick start (its 4 minutes stay 4 minutes): 100 images x their 200
    # captions = 20k pairs per eval, ~2.5 min at the 126 pairs/s measured for the tiny model
    # on the loaded 2-core machine. Turn on with --config.eval_retrieval_every_steps=1000.
    c.eval_retrieval_images = 100
    c.optimizer.learning_rate = 1e-3  # 2e-3 spikes early; 5e-4 learns no faster.
    c.optimizer.bert_lr_multiplier = 1.0
    # Warm-up ends at step 300; the quick start's eval ITM accuracy is 0.71 at step 500
    # (README table): 500 steps at chance after warm-up means it is stuck.
    c.plateau.window_steps = 500
    c.plateau.collapse_steps = 100
    # Dropout only slows learning of the small synthetic world (no overfitting within the
    # budget): measured 0.58 vs 0.73 ITM at step 500. Unit tests that need dropout set it.
    m = c.model
    m.embedding_dropout = m.itm_dropout = 0.0
    for stack in (m.single_stream, m.text_stream, m.image_stream):
      stack.hidden_dropout = stack.attention_dropout = 0.0
  if variant == "small":
    # The paper's recipe scaled down (BERT-initialised text side, a new image stream).
    # Values: docs/plateau.md "The small recipe" (tuned on the presets and seeds named there).
    from interbert_jax import bundled_bert  # pylint: disable=g-import-not-at-top
    c.init_from = bundled_bert.model_dir()  # converted at start-up (checkpoints/init_from.py)
    c.total_steps = 1_000             # 1.0-1.8 steps/s at batch 32 on 2 CPU cores: 10-17 minutes.
    c.optimizer.learning_rate = 5e-4
    # Both off the paper's values on purpose (docs/plateau.md "The small recipe"): at 0.1x
    # and with zero pooler biases `small` sits at ln 2 on 24 x 8 worlds (more_classes).
    c.optimizer.bert_lr_multiplier = 1.0
    c.model.pooler_bias_init = 1.0
  return synthetic_worlds.apply_preset(c, preset)
