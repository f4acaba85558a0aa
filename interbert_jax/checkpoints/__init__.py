"""Checkpoints, one file per kind.

  model_files  model checkpoints: `config.json` + `params/` (load_checkpoint / save_checkpoint)
  run_state    a training run's orbax checkpoints: params, optimizer state, rng, data position
  init_from    `config.init_from`: merge a (partial) model checkpoint into fresh parameters
"""
