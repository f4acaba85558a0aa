"""python -m interbert_jax.convert {hf_bert,reference,to_reference} --help"""
import argparse
import logging

from interbert_jax import errors

EXAMPLES = """examples:
  # BERT (here all-MiniLM-L6-v2, 6 layers) -> InterBERT with 3 single-stream + 3 text layers
  python -m interbert_jax.convert hf_bert --checkpoint=/path/to/bert_dir \\
      --single_stream_layers=3 --text_layers=3 --output=/ckpt/minilm_interbert
  # bert-base-uncased -> the released 6/6/6 initialisation
  python -m interbert_jax.convert hf_bert --checkpoint=/path/to/bert-base-uncased \\
      --single_stream_layers=6 --text_layers=6 --output=/ckpt/bert_base_init
  # official InterBERT checkpoint -> ours, and back
  python -m interbert_jax.convert reference --checkpoint=pytorch_model_14.bin \\
      --reference_config=config/bert_base_6layer_interbert.json --output=/ckpt/interbert
  python -m interbert_jax.convert to_reference --checkpoint=/ckpt/interbert \\
      --output=workdirs/interbert.safetensors
"""


def _common(p):
  p.add_argument("--scan_layers", action="store_true",
                 help="write the scanned layout (<stack>/layers with a leading layer axis)")
  p.add_argument("--config_variant", default="base",
                 help="variant of configs/pretrain.py giving everything the source config "
                      "does not (dtypes, remat, feature size, ...); default: base")
  p.add_argument("--config_file", default=None,
                 help="a config file with get_config(variant) to use instead of the shipped "
                      "configs/pretrain.py")


def parser():
  p = argparse.ArgumentParser(
      prog="python -m interbert_jax.convert", description=__doc__.strip() + "\n\n" +
      "Converts checkpoints between InterBERT-JAX, Hugging Face BERT and the official "
      "PyTorch InterBERT.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")

  h = sub.add_parser("hf_bert", help="Hugging Face BERT dir -> initial InterBERT checkpoint",
                     description="BERT embeddings -> ours; BERT layers 0..L-1 -> single stream, "
                     "L..L+K_t-1 -> text stream; cls.predictions.* -> MSM head when present; "
                     "the rest freshly initialised. Sizes come from BERT's config.json.")
  h.add_argument("--checkpoint", required=True,
                 help="HF BERT dir: config.json + model.safetensors or pytorch_model.bin")
  h.add_argument("--output", required=True, help="model checkpoint dir to write")
  h.add_argument("--single_stream_layers", type=int, required=True, help="L")
  h.add_argument("--text_layers", type=int, required=True, help="K_t")
  h.add_argument("--image_layers", type=int, default=None,
                 help="K_v (default: the config variant's)")
  h.add_argument("--seed", type=int, default=0, help="init seed of the non-BERT parameters")
  _common(h)

  r = sub.add_parser("reference", help="official InterBERT .bin/.safetensors -> ours",
                     description="Official InterBERT state dict (black4321/InterBERT) -> "
                     "InterBERT-JAX model checkpoint; architecture from the reference config.")
  r.add_argument("--checkpoint", required=True, help="pytorch_model*.bin or .safetensors")
  r.add_argument("--reference_config", required=True,
                 help="the reference's config JSON (e.g. bert_base_6layer_interbert.json)")
  r.add_argument("--output", required=True, help="model checkpoint dir to write")
  _common(r)

  t = sub.add_parser("to_reference", help="ours -> official InterBERT state dict",
                     description="InterBERT-JAX model checkpoint (scanned or not) -> the "
                     "reference's state dict, written by extension: .bin (needs torch) or "
                     ".safetensors. Lossless.")
  t.add_argument("--checkpoint", required=True, help="model checkpoint dir")
  t.add_argument("--output", required=True, help="FILE.bin or FILE.safetensors")
  t.add_argument("--reference_config_output", default=None,
                 help="also write the reference's config JSON here")
  t.add_argument("--overwrite", action="store_true",
                 help="replace --output / --reference_config_output if they exist "
                      "(default: refuse, one line naming the file)")
  return p


@errors.cli_main
def main(argv=None):
  """A user mistake (errors.UserError: paths, configs, tensors, an existing output, a file
  that does not read) is one line on stderr and exit 2; anything else keeps its traceback."""
  args = parser().parse_args(argv)
  # Our progress lines at INFO; library chatter (orbax, absl) only from WARNING up.
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  logging.getLogger("interbert_jax").setLevel(logging.INFO)
  from interbert_jax.convert import commands  # pylint: disable=g-import-not-at-top
  if args.mode == "hf_bert":
    commands.hf_bert_checkpoint(
        args.checkpoint, args.single_stream_layers, args.text_layers, args.image_layers,
        output=args.output, seed=args.seed, scan_layers=args.scan_layers,
        config_variant=args.config_variant, config_file=args.config_file)
  elif args.mode == "reference":
    commands.reference_checkpoint(
        args.checkpoint, args.reference_config, output=args.output,
        scan_layers=args.scan_layers, config_variant=args.config_variant,
        config_file=args.config_file)
  else:
    commands.to_reference_checkpoint(args.checkpoint, args.output,
                                     args.reference_config_output, overwrite=args.overwrite)
  return 0


if __name__ == "__main__":
  errors.exit_now(main())
