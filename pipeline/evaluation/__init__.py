"""Reads the predictions contract and files only: class-wise metrics, threshold moving, the report."""
