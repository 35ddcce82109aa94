"""compressor: make a trained transformer fit an edge device, and prove that it fits."""

__version__ = "0.1.0"
