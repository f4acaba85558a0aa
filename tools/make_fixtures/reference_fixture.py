"""Builds the tiny official-InterBERT fixture the converter parity tests compare against.

Command (the peer venv has torch; the reference tree is public black4321/InterBERT @7ccabb1,
unpacked outside the repo and never committed):
  INTERBERT_REF_DIR=$INTERBERT_REF_DIR $PEER_PYTHON \
      tools/make_fixtures/reference_fixture.py --out tests/fixtures/reference_tiny

Writes to --out:
  config.json        the reference's BertConfig JSON (same keys as bert_base_6layer_interbert.json)
  pytorch_model.bin  state dict of a random InterBertForMultiModalPreTraining
                     (every tensor perturbed)
  model.safetensors  the same tensors (tied decoder stored as a copy), so tests run without torch
  outputs.npz        fixed inputs (with text and region padding) and the reference's eval-mode
                     outputs: prediction_scores_t [B,T,V], prediction_scores_v [B,R,C] (all R,
                     index 0 included),
                     seq_relationship_score [B,2] (fusion "mul"), seq_relationship_score_sum [B,2]
                     (fusion "sum", same weights), sequence_output_t/v, pooled_output_t/v.
The sizes differ from stack to stack on purpose (L=2, K_t=3, K_v=2; text 2 heads, image 4 heads;
text FFN 64, image FFN 48; pooler 24) so a converter that mixes two of them up fails loudly.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

TINY = dict(
    attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
    hidden_size=32, initializer_range=0.02, intermediate_size=64, max_position_embeddings=40,
    num_attention_heads=2, num_hidden_layers=2, type_vocab_size=2, vocab_size=100,
    t_num_hidden_layers=3, v_feature_size=16, v_target_size=12, v_hidden_size=32,
    v_num_hidden_layers=2, v_num_attention_heads=4, v_intermediate_size=48,
    v_attention_probs_dropout_prob=0.1, v_hidden_act="gelu", v_hidden_dropout_prob=0.2,
    v_initializer_range=0.02, pooling_method="mul", conv_layer="normal_conv",
    max_region_length=5, max_seq_length=8, bi_hidden_size=24, fusion_method="mul",
    fast_mode=False, in_batch_pairs=False, predict_feature=False)


def perturb(model, gen):
  """Every tensor gets values far from its init: zero biases / unit LayerNorms cannot hide bugs."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith("LayerNorm.weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif p.ndim == 1:
        p.copy_(0.2 * noise)
      elif "embeddings" in name and "v_embeddings" not in name:
        p.copy_(0.5 * noise)
      else:  # keep activations O(1): std ~ 1/sqrt(fan_in).
        p.copy_(noise / np.sqrt(p.shape[1]))


def inputs(cfg, gen):
  b, t, r = 3, cfg["max_seq_length"], cfg["max_region_length"] + 1  # +1: global image token.
  text_len = [8, 5, 3]
  n_regions = [5, 3, 1]                       # real regions, global token excluded.
  ids = torch.zeros(b, t, dtype=torch.long)
  mask = torch.zeros(b, t, dtype=torch.long)
  seg = torch.zeros(b, t, dtype=torch.long)
  feat = torch.zeros(b, r, cfg["v_feature_size"])
  loc = torch.zeros(b, r, 5)
  rmask = torch.zeros(b, r, dtype=torch.long)
  for i in range(b):
    n = text_len[i]
    ids[i, :n] = torch.randint(5, cfg["vocab_size"], (n,), generator=gen)
    ids[i, 0], ids[i, n - 1] = 1, 2          # [CLS] ... [SEP] stand-ins.
    mask[i, :n] = 1
    k = n_regions[i]
    feat[i, 1:k + 1] = torch.rand(k, cfg["v_feature_size"], generator=gen) * 2
    feat[i, 0] = feat[i, 1:k + 1].sum(0) / k   # global token: mean of the real regions.
    xy = torch.rand(k, 2, generator=gen) * 0.5
    wh = torch.rand(k, 2, generator=gen) * 0.5
    loc[i, 1:k + 1] = torch.cat([xy, xy + wh, (wh[:, :1] * wh[:, 1:])], 1)
    loc[i, 0] = torch.tensor([0, 0, 1, 1, 1.0])
    rmask[i, :k + 1] = 1
  seg[0, 4:8] = 1                             # exercises the segment table (row 0 only).
  return dict(input_ids=ids, attention_mask=mask, token_type_ids=seg, image_feat=feat,
              image_loc=loc, image_attention_mask=rmask)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  ref_dir = os.environ.get("INTERBERT_REF_DIR")
  if not ref_dir or not os.path.isdir(os.path.join(ref_dir, "bertmodel")):
    sys.exit("set INTERBERT_REF_DIR to an unpacked black4321/InterBERT tree (has bertmodel/)")
  sys.path.insert(0, ref_dir)
  from bertmodel.modules import BertConfig, InterBertForMultiModalPreTraining

  torch.manual_seed(a.seed)
  gen = torch.Generator().manual_seed(a.seed)
  config = BertConfig.from_dict(dict(TINY))
  model = InterBertForMultiModalPreTraining(config)
  perturb(model, gen)
  model.eval()
  x = inputs(TINY, gen)
  multimodal = torch.cat([x["image_attention_mask"], x["attention_mask"]], 1)  # image first.
  out = {k: v.numpy() for k, v in x.items()}
  with torch.no_grad():
    args = (x["input_ids"], x["image_feat"], x["image_loc"], x["token_type_ids"],
            x["attention_mask"], x["image_attention_mask"], multimodal)
    t, v, itm, _ = model(*args)
    seq_t, seq_v, pool_t, pool_v, _ = model.bert(*args)
    model.cls.fusion_method = "sum"
    _, _, itm_sum, _ = model(*args)
    model.cls.fusion_method = "mul"
  out.update(prediction_scores_t=t.numpy(), prediction_scores_v=v.numpy(),
             seq_relationship_score=itm.numpy(), seq_relationship_score_sum=itm_sum.numpy(),
             sequence_output_t=seq_t.numpy(), sequence_output_v=seq_v.numpy(),
             pooled_output_t=pool_t.numpy(), pooled_output_v=pool_v.numpy())
  os.makedirs(a.out, exist_ok=True)
  torch.save(model.state_dict(), os.path.join(a.out, "pytorch_model.bin"))
  from safetensors.torch import save_file  # safetensors refuses shared storage: copy.
  save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
            os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(TINY, f, indent=2, sort_keys=True)
  np.savez_compressed(os.path.join(a.out, "outputs.npz"), **out)
  print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
  main()
