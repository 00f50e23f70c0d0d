"""Torch custom ops: validate inputs, then run the CUDA launcher or the reference."""
