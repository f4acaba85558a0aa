"""A family of named synthetic worlds: presets that vary what makes the task hard.

Each preset is config overrides (dotted keys of configs/pretrain.py: data.synthetic.*, and
model.* / data.* where the world needs them) applied by the config argument:

  python -m interbert_jax.main --config=configs/pretrain.py:tiny,preset=hard ...
  python -m interbert_jax.data.synthetic --config=configs/pretrain.py:tiny,preset=hard
  python -m interbert_jax.data.synthetic --list          # the presets, one line each

The overrides land in the config itself, so the config stays the single source of truth
(--config.KEY=VALUE flags still apply on top) and the start-up validation
(interbert_jax/training/config_validation.py) checks the result like any other config.
The presets are written against the `tiny` variant (its 16-token captions, 10 regions).

Which presets are used to tune a recipe and which are held out to test it (issue 8's
honest-test rule: never report a recipe on a world it was tuned on) is a choice made by
whoever tunes, and recorded with the tuning; nothing here fixes it.
"""

# name -> (what makes it hard, in one line; its config overrides).
PRESETS = {
    "tiny_world": (
        "today's tiny world: 6 classes x 4 attributes, 1-3 objects, 1-3 boxes each, <= 1 "
        "clutter region, 64-d features, every object named", {}),
    "more_classes": (
        "24 classes x 8 attributes: each word is seen less often and more alike words "
        "compete", {"data.synthetic.num_object_classes": 24,
                    "data.synthetic.num_attributes": 8}),
    "many_objects": (
        "2-4 objects, 1-3 boxes each and up to 3 clutter regions in 16 regions: more to "
        "ground per caption", {"data.synthetic.min_objects": 2,
                               "data.synthetic.max_objects": 4,
                               "data.synthetic.max_clutter": 3, "data.max_regions": 16}),
    "one_box": (
        "one detector region per object: no overlapping sibling boxes to lean on",
        {"data.synthetic.min_boxes_per_object": 1, "data.synthetic.max_boxes_per_object": 1}),
    "big_features": (
        "2048-d region features and 1601 detector classes, the shapes of BUTD Faster R-CNN",
        {"model.feature_dim": 2048, "model.num_region_classes": 1601}),
    "flat_detector": (
        "flat detector distributions (true class 0.2-0.4, often below its confusable "
        "class): weak MRM targets", {"data.synthetic.detector_peak_min": 0.2,
                                     "data.synthetic.detector_peak_max": 0.4}),
    "partial_captions": (
        "half the captions name only some (>= 1) of the objects: regions without a word, "
        "no left-to-right match", {"data.synthetic.partial_caption_prob": 0.5}),
    "templates": (
        "varied caption templates (5 prefixes, 5 connectors) in 24-token captions: more "
        "filler words to mask", {"data.synthetic.caption_style": "varied",
                                 "data.text_len": 24}),
    "hard": (
        "48 classes x 12 attributes, 1-4 objects, 30% partial captions, 2048-d features, "
        "1601 detector classes", {"data.synthetic.num_object_classes": 48,
                                  "data.synthetic.num_attributes": 12,
                                  "data.synthetic.min_objects": 1,
                                  "data.synthetic.max_objects": 4,
                                  "data.synthetic.max_clutter": 2,
                                  "data.synthetic.partial_caption_prob": 0.3,
                                  "data.max_regions": 16, "model.feature_dim": 2048,
                                  "model.num_region_classes": 1601}),
}

# Detector-like worlds (docs/plateau.md): the synthetic world's objects and captions with
# region features shaped like a Faster R-CNN's (non-negative, heavy-tailed, a shared
# offset, one scale per image; synthetic_world.detector_features) at BUTD's shapes.
# Written down before any of them ran; held out from the choice of the `small` recipe.
_DETECTOR = {"data.synthetic.feature_style": "detector", "model.feature_dim": 2048,
             "model.num_region_classes": 1601}
PRESETS.update({
    "detector": (
        "detector-like 2048-d features (exp of the prototypes, offset -1.5, per-image "
        "scale sigma 0.5, 10% sparsity) and 1601 classes",
        {**_DETECTOR, "data.synthetic.feature_offset": -1.5,
         "data.synthetic.image_scale_sigma": 0.5, "data.synthetic.feature_sparsity": 0.1}),
    "detector_offset": (
        "detector-like features whose shared offset dominates: every channel on, the mean "
        "vector most of each region's norm",
        {**_DETECTOR, "data.synthetic.feature_offset": 0.5,
         "data.synthetic.image_scale_sigma": 0.3}),
    "detector_scale": (
        "detector-like features with a per-image scale of sigma 0.8 (brightness over ~5x)",
        {**_DETECTOR, "data.synthetic.image_scale_sigma": 0.8}),
    "detector_sparse": (
        "detector-like features, most entries 0 (as after a ReLU): offset -1.5, entries "
        "below 0.5 zeroed",
        {**_DETECTOR, "data.synthetic.feature_offset": -1.5,
         "data.synthetic.feature_sparsity": 0.5, "data.synthetic.image_scale_sigma": 0.3}),
    "detector_clutter": (
        "detector-like features with many_objects' scenes: 2-4 objects, up to 3 clutter "
        "regions, 16 regions",
        {**_DETECTOR, "data.synthetic.image_scale_sigma": 0.4,
         **PRESETS["many_objects"][1]}),
    "detector_flat": (
        "detector-like features with flat_detector's weak detector distributions",
        {**_DETECTOR, "data.synthetic.image_scale_sigma": 0.4,
         **PRESETS["flat_detector"][1]}),
    "detector_boxes": (
        "detector-like features, 1-4 overlapping boxes per object, padded with clutter to "
        "20 regions per image",
        {**_DETECTOR, "data.synthetic.image_scale_sigma": 0.4,
         "data.synthetic.max_boxes_per_object": 4, "data.synthetic.fill_regions": 20,
         "data.max_regions": 20}),
})


def preset_overrides(name: str) -> dict:
  """The dotted-key config overrides of preset `name` ("" = none)."""
  if not name:
    return {}
  if name not in PRESETS:
    raise ValueError(f"unknown synthetic world preset {name!r}: one of {', '.join(PRESETS)}")
  return dict(PRESETS[name][1])


def apply_preset(config, name: str):
  """Sets preset `name`'s overrides in `config` (in place) and returns it."""
  config.update_from_flattened_dict(preset_overrides(name))
  return config


def describe() -> str:
  """One line per preset: its name and what makes it hard."""
  width = max(map(len, PRESETS))
  return "\n".join(f"{name:<{width}}  {why}" for name, (why, _) in PRESETS.items())
