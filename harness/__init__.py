"""Benchmark harness for training-data selection methods for language models."""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this package runs from: conf/, selectors/ and tasks/ live beside it."""
