"""Test images and the results Darkroom must produce from them: the harness's, by their old name.

They live in ``harness/images.py`` because the chaos run there checks results with them.
"""

from harness.images import decode, encode, noise_png, png_bytes, same_pixels, swapped

__all__ = ["decode", "encode", "noise_png", "png_bytes", "same_pixels", "swapped"]
