"""Cropping, normalization, resampling and the per-case preprocessed store."""
