"""U-Net networks built from a plan, by name from a registry."""
