"""Helpers shared by tests/ and bench/ (never installed)."""
from pathlib import Path

# The checkout's root: where protos/, deploy/, gen/ and the Makefile are.
ROOT = Path(__file__).resolve().parent.parent
