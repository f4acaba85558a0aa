"""InterBERT-JAX configs, shipped with the distribution (`import configs.pretrain`).

Each module exposes `get_config(arg)` (ml_collections), so a file also works with
`--config=configs/<file>.py:<variant>` on the command line.
"""
