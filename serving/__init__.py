"""Inference runtime, command line and HTTP service."""
