"""Ahead-of-time compilation for TPU slices with the TPU compiler, on any machine."""
