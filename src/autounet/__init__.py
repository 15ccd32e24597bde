"""autounet: a self-configuring medical image segmentation pipeline."""

__version__ = "0.1.0"
