"""Orchestration: the whole run, experiments and their statistics, scheduled retraining, its gate and promotion."""
