"""Names of the training augmentations an experiment may switch off, and the spatial implementations.

Kept apart from `augmentation.py` (which imports batchgenerators and scipy) so that settings
can validate these names without loading the transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Augmentations that an ablation may switch off one by one (`TrainingSettings.disabled_augmentations`).
AUGMENTATION_NAMES = ("spatial", "noise", "blur", "brightness", "contrast", "low_resolution", "gamma_inverted",
                      "gamma", "mirror")
#: "affine": our scipy affine resampling; "batchgenerators": batchgenerators' SpatialTransform.
SPATIAL_IMPLEMENTATIONS = ("affine", "batchgenerators")


def check_augmentation_names(names: Sequence[str], where: str = "disabled augmentations") -> tuple[str, ...]:
    """The names as a tuple; an unknown name is a ValueError that lists the known ones."""
    unknown = [n for n in names if n not in AUGMENTATION_NAMES]
    if unknown:
        raise ValueError(f"{where}: unknown augmentation(s) {unknown}; known: {', '.join(AUGMENTATION_NAMES)}")
    return tuple(names)
