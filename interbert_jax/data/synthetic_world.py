"""A small synthetic "world" of objects, attributes, images and captions (no download).

An image holds min_objects..max_objects objects (tiny: 1-3), each an (attribute, class)
pair drawn uniformly from the first num_attributes x num_object_classes words (tiny: 4 x 6;
fewer words are learned from fewer examples), placed in distinct cells of a 2x2 grid so that different objects never
overlap. Each object yields 1-3 detector regions whose boxes are jittered copies of the
object's box (pairwise IoU >= 0.57 by construction, so IoU >= 0.4 MRM grouping masks an
object's regions together), plus 0..max_clutter small clutter regions. A region's feature is
class prototype + attribute prototype + Gaussian noise; its detector distribution peaks on
the true class with some mass on a fixed "confusable" class. Captions name every object with
its attribute ("a photo of a red dog next to a wooden car ."), left to right by box centre
(spatial_order) or in random order, so a masked object/attribute word can only be recovered
from the regions and a masked region group only from the caption (with spatial order, the
masked group's location tells which caption object it is).

Harder worlds (configs/synthetic_worlds.py names a family of them) turn further knobs: up to
48 classes x 12 attributes (EXTRA_CLASSES / EXTRA_ATTRIBUTES come after the original 24 x 10,
so those keep their indices, prototypes and detector classes), min..max boxes per object,
how peaked the objects' detector distributions are, a "varied" caption style with more
filler templates, and captions that name only some (>= 1) of the image's objects. Every
English word is one WordPiece token of the bert-base-uncased vocabulary. The defaults
reproduce the original world byte for byte.

Captions are English words (language "en") or Chinese text (language "zh", the paper's
second model): the same objects named by real Chinese words ("照片里有一个红色的狗和一个
木制的汽车。"), joined into a string and split by the BERT tokenizer (tokenizer.py, one
token per CJK character) against a vocabulary the world generates: the special tokens and
every character the Chinese words use.
"""
from __future__ import annotations

import numpy as np

from interbert_jax.errors import BadValueError
from interbert_jax.data import masking
from interbert_jax.data import tokenizer as tokenizer_lib
from interbert_jax.data.tokenizer import SPECIAL_TOKENS

LANGUAGES = ("en", "zh")         # config.data.synthetic.language
# config.data.synthetic.vocab: "world" = the world's own small vocabulary (vocab_tokens);
# "bert" = the bert-base-uncased vocabulary of the bundled BERT (bundled_bert.py), for
# recipes that start from that BERT (English only: every English word here is one of its
# WordPiece tokens).
VOCABS = ("world", "bert")

# Adjacent pairs are each other's "confusable" class (the detector mixes them up).
CLASSES = ("dog", "cat", "car", "bus", "tree", "bush", "house", "tower", "bird", "kite",
           "horse", "cow", "boat", "ship", "chair", "bench", "table", "desk", "cup",
           "bottle", "book", "lamp", "flower", "clock")
ATTRIBUTES = ("red", "blue", "green", "yellow", "white", "black", "wooden", "metal",
              "small", "large")
# Few filler templates: every filler word is a masked-span target the regions cannot help
# with, so many random fillers drown the cross-modal signal in MSM.
PREFIXES = (("a", "photo", "of"), ("there", "is"))
CONNECTORS = (("and",), ("next", "to"))
PUNCT = (".", ",")
# More words, after the original ones (whose indices, prototypes and detector classes stay):
# worlds with num_object_classes > 24 / num_attributes > 10 use them, in order. Adjacent
# pairs are confusable, as above. English only (Chinese worlds keep the first 24 x 10).
EXTRA_CLASSES = ("apple", "pear", "train", "truck", "sheep", "goat", "bed", "sofa", "pen",
                 "pencil", "shoe", "boot", "hat", "cap", "door", "window", "plate", "bowl",
                 "phone", "camera", "guitar", "piano", "lion", "tiger")
EXTRA_ATTRIBUTES = ("old", "new")
ALL_CLASSES = CLASSES + EXTRA_CLASSES
ALL_ATTRIBUTES = ATTRIBUTES + EXTRA_ATTRIBUTES
# config.data.synthetic.caption_style: "basic" = the templates above; "varied" adds more
# prefixes and connectors (more filler words the regions cannot help to recover).
CAPTION_STYLES = ("basic", "varied")
VARIED_PREFIXES = {"en": (("in", "this", "picture", "we", "see"), ("this", "image", "shows"),
                          ("here", "is")),
                   "zh": (("这张图片里有",), ("我们看到",), ("这里有",))}
VARIED_CONNECTORS = {"en": (("with",), ("beside",), ("as", "well", "as")),
                     "zh": (("还有",), ("以及",), ("旁边还有",))}
# The same words in Chinese, index for index (the detector's confusable pairs included).
ZH_CLASSES = ("狗", "猫", "汽车", "公共汽车", "树", "灌木", "房子", "塔", "鸟", "风筝",
              "马", "牛", "小船", "轮船", "椅子", "长凳", "桌子", "书桌", "杯子",
              "瓶子", "书", "台灯", "花", "钟")
ZH_ATTRIBUTES = ("红色的", "蓝色的", "绿色的", "黄色的", "白色的", "黑色的", "木制的",
                 "金属的", "小的", "大的")
ZH_PREFIXES = (("照片里有",), ("有",))          # "in the photo there is" / "there is"
ZH_CONNECTORS = (("和",), ("旁边是",))          # "and" / "next to it is"
ZH_PUNCT = ("。", "，")
# A language's words: (classes, attributes, prefixes, connectors, (full stop, comma),
# the article, the short "and").
LEXICONS = {
    "en": (CLASSES, ATTRIBUTES, PREFIXES, CONNECTORS, PUNCT, "a", "and"),
    "zh": (ZH_CLASSES, ZH_ATTRIBUTES, ZH_PREFIXES, ZH_CONNECTORS, ZH_PUNCT, "一个", "和"),
}
# Clutter regions (background stuff) get detector classes after the named objects.
NUM_CLUTTER_CLASSES = 8
GRID = ((0, 0), (1, 0), (0, 1), (1, 1))   # Cells of the 2x2 layout: one object per cell.
EXTRA_WORDS = {"en": (EXTRA_CLASSES, EXTRA_ATTRIBUTES), "zh": ((), ())}


def max_object_classes(language="en"):
  """How many object classes / attributes a language has words for."""
  return (len(LEXICONS[language][0]) + len(EXTRA_WORDS[language][0]),
          len(LEXICONS[language][1]) + len(EXTRA_WORDS[language][1]))


def lexicon(language="en", num_object_classes=0, num_attributes=0, caption_style="basic"):
  """A world's words, laid out as LEXICONS: the original classes and attributes plus the
  extra ones up to num_object_classes / num_attributes (0 or fewer = the original 24 / 10),
  and the templates of caption_style."""
  classes, attributes, prefixes, connectors, punct, article, short_and = LEXICONS[language]
  extra_classes, extra_attributes = EXTRA_WORDS[language]
  classes += extra_classes[:max(0, num_object_classes - len(classes))]
  attributes += extra_attributes[:max(0, num_attributes - len(attributes))]
  if caption_style == "varied":
    prefixes += VARIED_PREFIXES[language]
    connectors += VARIED_CONNECTORS[language]
  return classes, attributes, prefixes, connectors, punct, article, short_and


def _lexicon_words(words):
  classes, attributes, prefixes, connectors, punct, article, short_and = words
  words = set(classes) | set(attributes) | set(punct) | {article, short_and}
  for group in (prefixes, connectors):
    for phrase in group:
      words.update(phrase)
  return words


def vocab_tokens(language="en", num_object_classes=0, num_attributes=0,
                 caption_style="basic", vocab="world"):
  """The synthetic vocabulary: BERT special tokens first ([PAD] = 0), then the sorted words
  of the original lexicon ("en") or every character of them ("zh": a Chinese BERT
  vocabulary is characters), then, sorted, those that the world's extra classes,
  attributes and caption style add: the original words keep their ids in every world.
  vocab="bert": the bundled bert-base-uncased vocabulary instead (30,522 tokens), which
  holds every English word of the world as one token."""
  if vocab == "bert":
    from interbert_jax import bundled_bert  # pylint: disable=g-import-not-at-top
    tokens = bundled_bert.vocab_tokens()
    missing = sorted(_lexicon_words(lexicon(language, num_object_classes, num_attributes,
                                            caption_style)) - set(tokens))
    if language != "en" or missing:
      raise BadValueError(f"config.data.synthetic.vocab='bert': the {language!r} words "
                          f"{missing[:5]} are not tokens of {bundled_bert.vocab_file()}")
    return tokens
  base = _lexicon_words(LEXICONS[language])
  words = _lexicon_words(lexicon(language, num_object_classes, num_attributes, caption_style))
  if language == "zh":
    base, words = ({ch for w in ws for ch in w} for ws in (base, words))
  return list(SPECIAL_TOKENS) + sorted(base) + sorted(words - base)


def caption_encoder(language="en", num_object_classes=0, num_attributes=0,
                    caption_style="basic", vocab="world"):
  """-> (encode, length): caption words -> token ids, and -> number of tokens.

  "en": one vocabulary id per word. "zh": the words are joined into Chinese text, which the
  BERT tokenizer (tokenizer.py) splits against vocab_tokens("zh", ...).
  """
  vocab = {w: i for i, w in enumerate(vocab_tokens(language, num_object_classes,
                                                   num_attributes, caption_style, vocab))}
  if language == "en":
    return (lambda words: [vocab[w] for w in words]), len
  tok = tokenizer_lib.Tokenizer(vocab, lower_case=True)
  return (lambda words: tok.encode("".join(words))), (lambda words: len(tok.tokenize("".join(words))))


def num_detector_classes_needed(num_object_classes=0):
  """Background (0) + objects + clutter: the smallest num_classes the world fits in."""
  return 1 + len(CLASSES) + NUM_CLUTTER_CLASSES + max(0, num_object_classes - len(CLASSES))


def detector_class(cls):
  """An object class's detector class: 1.. for the original classes, then the clutter
  classes, then the extra classes (so the original layout is unchanged)."""
  if cls < len(CLASSES):
    return 1 + cls
  return 1 + len(CLASSES) + NUM_CLUTTER_CLASSES + (cls - len(CLASSES))


def make_prototypes(seed: int, feature_dim: int, num_object_classes=0, num_attributes=0):
  """Class, attribute and clutter prototypes [K, F] float32, fixed by `seed`.

  Entries ~ N(0, 1) for classes and clutter, N(0, 0.7^2) for attributes: random vectors in
  F dimensions are nearly orthogonal, so classes and attributes are easy to tell apart.
  Extra classes / attributes (beyond the original 24 / 10) come from a generator of their
  own, so the original prototypes are the same in every world.
  """
  rng = np.random.default_rng([seed, 1])
  protos = dict(
      classes=rng.normal(0.0, 1.0, (len(CLASSES), feature_dim)).astype(np.float32),
      attributes=rng.normal(0.0, 0.7, (len(ATTRIBUTES), feature_dim)).astype(np.float32),
      clutter=rng.normal(0.0, 1.0, (NUM_CLUTTER_CLASSES, feature_dim)).astype(np.float32))
  extra_cls = max(0, num_object_classes - len(CLASSES))
  extra_attr = max(0, num_attributes - len(ATTRIBUTES))
  if extra_cls or extra_attr:
    extra = np.random.default_rng([seed, 2])
    protos["classes"] = np.concatenate([protos["classes"], extra.normal(
        0.0, 1.0, (extra_cls, feature_dim)).astype(np.float32)])
    protos["attributes"] = np.concatenate([protos["attributes"], extra.normal(
        0.0, 0.7, (extra_attr, feature_dim)).astype(np.float32)])
  return protos


FEATURE_STYLES = ("gaussian", "detector")


def feature_offset(seed: int, feature_dim: int, mean: float) -> np.ndarray:
  """The world's shared per-channel offset [F] of detector-style features (its own stream,
  so the prototypes stay those of the gaussian world)."""
  return np.random.default_rng([seed, 3]).normal(mean, 0.3, feature_dim).astype(np.float32)


def detector_features(rng, feats, offset, scale_sigma: float, sparsity: float):
  """Gaussian-world features [N, F] -> detector-like ones: non-negative, heavy-tailed,
  sparse, with a shared offset and one scale per image, like pooled ReLU CNN features.

  f = s * exp(0.7 x + offset), s ~ LogNormal(0, scale_sigma) per image; entries below
  `sparsity * s` become 0. The class signal stays in which channels are large.
  """
  scale = float(rng.lognormal(0.0, scale_sigma)) if scale_sigma > 0 else 1.0
  f = np.exp(0.7 * np.asarray(feats, np.float32) + offset) * scale
  f[f < sparsity * scale] = 0.0
  return f


def _detector_distribution(rng, true_class, confusable, num_classes, low, high):
  """A detector-like class distribution [C]: peaked on true_class, some mass on confusable."""
  p = np.zeros((num_classes,), np.float32)
  peak = rng.uniform(low, high)
  rest = 1.0 - peak
  conf_mass = rest * rng.uniform(0.4, 0.8) if confusable is not None else 0.0
  p += 0.2 * (rest - conf_mass) / num_classes             # a floor over every class.
  others = rng.choice(num_classes, size=4, replace=False)
  p[others] += 0.8 * (rest - conf_mass) * rng.dirichlet(np.ones(4)).astype(np.float32)
  p[true_class] += peak
  if confusable is not None:
    p[confusable] += conf_mass
  return p / p.sum()


def _jitter(rng, box, frac):
  """Moves each side of a box by up to frac of its width/height."""
  x1, y1, x2, y2 = box
  w, h = x2 - x1, y2 - y1
  d = rng.uniform(-frac, frac, 4) * np.array([w, h, w, h])
  return np.array([x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3]], np.float32)


def longest_short_caption(language, n_objects, num_object_classes, num_attributes):
  """Tokens of the longest caption in its shortest form (no prefix, no articles) that
  n_objects objects of the first num_object_classes x num_attributes words can need."""
  classes, attributes, _, _, punct, _, short_and = lexicon(language, num_object_classes,
                                                           num_attributes)
  _, length = caption_encoder(language, num_object_classes, num_attributes)
  attr = max(attributes[:num_attributes], key=lambda w: length([w]))
  cls = max(classes[:num_object_classes], key=lambda w: length([w]))
  words = [w for _ in range(n_objects) for w in (attr, cls, punct[1])]
  return length(words[:-1] + [punct[0]]) + (length([short_and]) - length([punct[1]])) * (
      n_objects > 1)


def caption_tokens(rng, objects, max_len, order=None, language="en", length=len, words=None):
  """Words of one caption naming (attribute, class) objects, at most max_len tokens.

  order: the indices of the objects named, in caption order (None = every object, in random
  order). words: the world's lexicon() (None = LEXICONS[language]). Tries a random long form first;
  when it does not fit, drops the prefix, then uses one-word connectors, then drops the
  articles ("red dog , wooden car and blue tree ."). length: words -> their token count
  (caption_encoder; a Chinese word is several tokens).
  """
  classes, attributes, prefixes, connectors, punct, article, short_and = (
      words or LEXICONS[language])
  order = rng.permutation(len(objects)) if order is None else order
  prefix = prefixes[rng.integers(len(prefixes))]
  conns = [connectors[rng.integers(len(connectors))] for _ in range(len(order) - 1)]
  short_conns = [(short_and,) if i == len(order) - 2 else (punct[1],)
                 for i in range(len(conns))]
  for level in range(4):
    caption = list(prefix) if level == 0 else []
    for j, i in enumerate(order):
      attr, cls = objects[i]
      if j > 0:
        caption.extend(conns[j - 1] if level <= 1 else short_conns[j - 1])
      if level < 3:
        caption.append(article)
      caption.extend((attributes[attr], classes[cls]))
    caption.append(punct[0])
    if length(caption) <= max_len:
      return caption
  raise BadValueError(f"a caption of {len(order)} objects needs {length(caption)} tokens, more "
                      f"than the {max_len} that fit into config.data.text_len")


def _some_objects(rng, n_obj, order=None):
  """A random 1..n_obj-1 of the objects, in `order` (None = a random order)."""
  keep = rng.choice(n_obj, int(rng.integers(1, n_obj)), replace=False)
  if order is None:
    return rng.permutation(keep)
  return np.asarray([i for i in order if i in set(keep.tolist())])


def make_image(rng, index, prototypes, *, num_classes, max_regions, fill_regions,
               noise, caption_len, captions_per_image, encoder, split, min_objects=2,
               max_objects=4, max_clutter=2, spatial_order=False, num_object_classes=0,
               num_attributes=0, language="en", min_boxes=1, max_boxes=3,
               detector_peak=(0.5, 0.9), partial_caption_prob=0.0, caption_style="basic",
               words=None, detector_style=None):
  """One synthetic image: (record in the schema layout, captions as token-id lists, truth).

  max_regions caps the number of regions (objects keep >= 1 each); fill_regions > 0 pads
  with clutter up to exactly that many regions (benchmark shapes). min/max_objects: objects
  per image (uniform, at most 4 = the grid cells); max_clutter: clutter regions per image
  (uniform in 0..max_clutter); spatial_order: captions name objects left to right;
  num_object_classes / num_attributes > 0: draw objects from the first that many
  ALL_CLASSES / ALL_ATTRIBUTES (0 = the original 24 / 10; the vocabulary holds at least
  those, and the original classes keep their detector classes); encoder: the (encode, length) pair of caption_encoder(language, ...).
  min/max_boxes: detector regions per object (uniform; max_regions may trim them);
  detector_peak: (low, high) of the uniform probability an object's region gives its true
  class; partial_caption_prob: the chance that a caption of a >= 2-object image names only
  a random 1..n-1 of them (in caption order); caption_style: CAPTION_STYLES;
  detector_style: None (gaussian features) or (offset [F], scale_sigma, sparsity) for
  detector_features.
  """
  feature_dim = prototypes["classes"].shape[1]
  width = int(rng.integers(480, 801))
  height = int(rng.integers(360, 641))
  n_obj = int(rng.integers(min_objects, max_objects + 1))
  n_obj = max(1, min(n_obj, max_regions - 1, len(GRID)))
  cells = rng.permutation(len(GRID))[:n_obj]
  n_attr = num_attributes or len(ATTRIBUTES)
  n_cls = num_object_classes or len(CLASSES)
  objects = [(int(rng.integers(n_attr)), int(rng.integers(n_cls))) for _ in range(n_obj)]
  per_obj = rng.integers(min_boxes, max_boxes + 1, n_obj)
  n_clutter = int(rng.integers(0, max_clutter + 1))
  budget = (fill_regions or max_regions)
  while per_obj.sum() + n_clutter > budget and per_obj.max() > 1:
    per_obj[int(np.argmax(per_obj))] -= 1
  n_clutter = max(0, min(n_clutter, budget - int(per_obj.sum())))
  if fill_regions:
    n_clutter = fill_regions - int(per_obj.sum())

  boxes, feats, probs, owner, centres = [], [], [], [], []
  cw, ch = width / 2.0, height / 2.0
  for obj, ((attr, cls), cell, k) in enumerate(zip(objects, cells, per_obj)):
    gx, gy = GRID[cell]
    bw, bh = rng.uniform(0.5, 0.9) * cw, rng.uniform(0.5, 0.9) * ch
    x1 = gx * cw + rng.uniform(0.03, 0.97) * (cw - bw)
    y1 = gy * ch + rng.uniform(0.03, 0.97) * (ch - bh)
    base = np.array([x1, y1, x1 + bw, y1 + bh], np.float32)
    centres.append(x1 + bw / 2)
    proto = prototypes["classes"][cls] + prototypes["attributes"][attr]
    for _ in range(int(k)):
      owner.append(obj)
      boxes.append(_jitter(rng, base, 0.07))
      feats.append(proto + rng.normal(0.0, noise, feature_dim))
      probs.append(_detector_distribution(rng, detector_class(cls), detector_class(cls ^ 1),
                                          num_classes, *detector_peak))
  first_clutter = 1 + len(CLASSES)
  for _ in range(n_clutter):
    c = int(rng.integers(NUM_CLUTTER_CLASSES))
    bw, bh = rng.uniform(0.08, 0.25) * width, rng.uniform(0.08, 0.25) * height
    x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    owner.append(-1)
    boxes.append(np.array([x1, y1, x1 + bw, y1 + bh], np.float32))
    feats.append(prototypes["clutter"][c] + rng.normal(0.0, noise, feature_dim))
    probs.append(_detector_distribution(rng, first_clutter + c, None, num_classes, 0.3, 0.7))
  order = rng.permutation(len(boxes))    # Detectors do not list an object's boxes together.
  feats = np.stack(feats)
  if detector_style is not None:
    feats = detector_features(rng, feats, *detector_style)
  boxes = np.clip(np.stack(boxes)[order], 0, [width - 1, height - 1, width - 1, height - 1])
  cls_prob = np.stack(probs)[order]
  record = dict(
      image_id=f"synthetic_{split}_{index:07d}", width=np.int32(width),
      height=np.int32(height), num_boxes=np.int32(len(order)),
      boxes=boxes.astype(np.float32), features=feats[order].astype(np.float16),
      cls_prob=cls_prob.astype(np.float16),
      object_ids=cls_prob.argmax(-1).astype(np.int32),
      object_conf=masking.detector_confidence(cls_prob))
  # Left to right by the object's (unjittered) box centre.
  caption_order = np.argsort(centres, kind="stable") if spatial_order else None
  encode, length = encoder
  if words is None:           # the world's lexicon(); callers of many images pass it once
    words = lexicon(language, num_object_classes, num_attributes, caption_style)
  captions, named = [], []
  for _ in range(captions_per_image):
    caption_objects = caption_order
    if partial_caption_prob and n_obj > 1 and rng.random() < partial_caption_prob:
      caption_objects = _some_objects(rng, n_obj, caption_order)
    captions.append(encode(caption_tokens(rng, objects, caption_len, caption_objects,
                                          language, length, words)))
    named.append(list(range(n_obj)) if caption_objects is None else sorted(
        int(i) for i in caption_objects))
  # The generator's truth (for tests): the (attribute, class) objects, their box centres
  # (x, pixels), per region the index of the object it shows (-1 = clutter) and, per
  # caption, the indices of the objects it names.
  truth = dict(objects=objects, object_centre_x=np.asarray(centres),
               region_object=np.asarray(owner)[order], caption_objects=named)
  return record, captions, truth
