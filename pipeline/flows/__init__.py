"""Orchestration: the whole run, experiments and their statistics, scheduled retraining, the registry."""
