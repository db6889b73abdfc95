"""Spark stages before training: class distribution (profile), split, sampling, the exact selection keys, imbalance protocols."""
