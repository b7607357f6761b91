"""Training, threshold selection, metrics and evaluation."""
