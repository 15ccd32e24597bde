"""Segmentation metrics, folder evaluation, best-configuration choice."""
