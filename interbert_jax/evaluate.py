r"""Evaluate a checkpoint on a downstream task: python -m interbert_jax.evaluate TASK ...

  python -m interbert_jax.evaluate retrieval --checkpoint=workdirs/tiny_export \
      --data=$(python -m interbert_jax.data.synthetic --config=configs/pretrain.py:tiny \
               --task=retrieval) --split=test --output=workdirs/tiny_retrieval.json

--checkpoint is an export (python -m interbert_jax.export) or a training step directory
(<workdir>/checkpoints/<step>); --data a prepared dataset (interbert_jax.data.prepare or the
synthetic downstream data). The result is one JSON line on stdout and, with --output, the
same line in that file (written atomically). `python -m interbert_jax.evaluate TASK --help`
lists a task's flags. Exit 2 (one line on stderr) for a user mistake.

Tasks are modules of interbert_jax/evaluation/ with `add_arguments(parser)` (the task's
own flags) and `run(args) -> dict` (the result; {} on processes other than 0); add one to
TASKS below: retrieval (zero-shot or fine-tuned ITM ranking), multiple_choice and
classification (checkpoints of config.task runs).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # quiet TensorFlow, should a library load it

from interbert_jax import errors  # pylint: disable=g-import-not-at-top

TASKS = {
    "retrieval": "interbert_jax.evaluation.retrieval_cli",
    "multiple_choice": "interbert_jax.evaluation.multiple_choice",
    "classification": "interbert_jax.evaluation.classification",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m interbert_jax.evaluate", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="task", required=True, metavar="TASK",
                              help=" | ".join(TASKS))
  for name, module in TASKS.items():
    task = importlib.import_module(module)
    p = sub.add_parser(name, help=task.__doc__.split("\n")[0], description=task.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="An export directory or a training step directory.")
    p.add_argument("--data", default="", help="A prepared dataset directory (retrieval: "
                   "required; fine-tuned tasks: default the run's config.data.dir).")
    p.add_argument("--split", default="test", help="The split to evaluate (default test).")
    p.add_argument("--output", default="", help="FILE.json for the result (and its "
                   "FILE.json.blocks/ for resuming); default: stdout only.")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="Compute dtype (params stay as stored).")
    p.add_argument("--distributed", default="auto", choices=("auto", "true", "false"),
                   help="jax.distributed.initialize(): auto = when launched multi-process.")
    task.add_arguments(p)
  return parser


def _write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


@errors.cli_main
def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  errors.check_name(args.split, "--split")
  from interbert_jax.parallel import distributed
  from interbert_jax.training import log_filter
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  for handler in logging.getLogger().handlers:   # Our INFO lines; libraries' warnings.
    handler.addFilter(log_filter.OwnInfoFilter())
  distributed.maybe_initialize(args.distributed)
  # A user mistake (errors.UserError: bad checkpoint, data, split, output) is one line on
  # stderr and exit 2 (errors.cli_main); anything else is a bug and keeps its traceback.
  result = importlib.import_module(TASKS[args.task]).run(args)
  if result:
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.output:
      _write_atomic(args.output, line + "\n")
  return 0


if __name__ == "__main__":
  errors.exit_now(main())
