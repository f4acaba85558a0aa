"""Data: prepared-dataset layout (schema), tokenizer, importers, prepare/validate CLIs,
synthetic data, masking and the input pipeline. Submodules are imported on demand so that
`import interbert_jax.data` stays light (no TensorFlow)."""
