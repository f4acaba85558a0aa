"""Pretraining machinery: optimizer, train step, checkpoints, metrics, config checks."""
