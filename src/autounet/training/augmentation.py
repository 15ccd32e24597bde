"""Training and validation transform pipelines (batchgenerators v1) at the reference's settings.

The pipelines operate on a batch dict `{"data": (B, C, *S) float32, "seg": (B, 1, *S) int}` cut
at the enlarged initial patch size, and return `{"data": (B, C, *patch) float32, "target":
[(B, 1, *scale) int16 per deep-supervision scale], ...}`. What is drawn, how often and within
which ranges is decided in augmentation_policy.py; the transforms batchgenerators v1 lacks
(pseudo-2D folding, the fast affine spatial transform, the 50/50 brightness law, masking,
deep-supervision targets, the cascade's corruptions) are in transforms.py. This module only
chains them in the reference's order.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import ContrastAugmentationTransform, GammaTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform

from autounet.training.augmentation_switches import SPATIAL_IMPLEMENTATIONS, check_augmentation_names
from autounet.training.augmentation_policy import (
    BLUR_SIGMA,
    BRIGHTNESS_RANGE,
    CONTRAST_RANGE,
    ELASTIC_ALPHA,
    ELASTIC_SIGMA,
    GAMMA_RANGE,
    LOW_RES_ZOOM,
    NOISE_SIGMA,
    P_BLUR,
    P_BLUR_PER_CHANNEL,
    P_BRIGHTNESS,
    P_CONTRAST,
    P_ELASTIC,
    P_GAMMA,
    P_GAMMA_INVERTED,
    P_LOW_RES,
    P_LOW_RES_PER_CHANNEL,
    P_NOISE,
    P_ROTATION,
    P_SCALE,
    Rotation,
    SCALE_RANGE,
)
from autounet.training.transforms import (
    AffineSpatialTransform,
    Convert2DTo3DTransform,
    Convert3DTo2DTransform,
    DeepSupervisionTargetsTransform,
    MaskOutsideNonzeroTransform,
    MoveSegChannelToOneHotData,
    MultiplicativeBrightnessTransform,
    RandomBinaryMorphologyTransform,
    RemoveRandomComponentTransform,
)

def cascade_transforms(num_classes: int, augment: bool) -> list[AbstractTransform]:
    """Step 14 of the reference pipeline: one-hot of the previous stage, corrupted when augmenting."""
    moves: list[AbstractTransform] = [MoveSegChannelToOneHotData(num_classes)]
    if augment:
        moves += [RandomBinaryMorphologyTransform(num_classes - 1), RemoveRandomComponentTransform(num_classes - 1)]
    return moves


def training_transforms(
    patch_size: Sequence[int],
    rotation: Rotation,
    dummy_2d: bool,
    mirror_axes: Sequence[int],
    deep_supervision_scales: Sequence[Sequence[float]] | None,
    use_mask_for_norm: Sequence[bool],
    elastic: bool = False,
    spatial_impl: str = "affine",
    cascade_num_classes: int = 0,
    disabled: Sequence[str] = (),
    outside_label: int = 0,
) -> Compose:
    """The reference's training augmentation (section 6, steps 1-14 and 16), in that order.

    `rotation` holds (min, max) radians for batchgenerators' angle_x, angle_y, angle_z; the spatial
    transform centre-crops the enlarged input patch to `patch_size` (a sample without rotation,
    scaling or deformation is only cropped, without interpolation). `spatial_impl` "affine" is
    our faster equivalent of batchgenerators' SpatialTransform, which "batchgenerators" selects
    (and which elastic deformation always uses). `cascade_num_classes` K > 0 means "seg" carries
    the previous stage's segmentation as channel 1, which step 14 turns into K-1 data channels.
    `disabled` names augmentations (AUGMENTATION_NAMES) to leave out, for ablations; a disabled
    "spatial" still centre-crops the enlarged patch to `patch_size`. `outside_label` is the class index
    that -1 (padding, background outside the nonzero mask) becomes: 0, or a task's ignore index.
    """
    patch_size = [int(p) for p in patch_size]
    off = set(check_augmentation_names(disabled))
    if spatial_impl not in SPATIAL_IMPLEMENTATIONS:
        raise ValueError(f"spatial_impl must be 'affine' or 'batchgenerators', got {spatial_impl!r}")
    transforms: list[AbstractTransform] = []
    if dummy_2d:
        transforms.append(Convert3DTo2DTransform())
        spatial_patch = patch_size[1:]
    else:
        spatial_patch = patch_size
    p_rotation, p_scale = (0.0, 0.0) if "spatial" in off else (P_ROTATION, P_SCALE)
    if elastic or spatial_impl == "batchgenerators":
        transforms.append(batchgenerators_spatial(spatial_patch, rotation, elastic and "spatial" not in off,
                                                  p_rotation, p_scale))
    else:
        transforms.append(AffineSpatialTransform(spatial_patch, rotation, p_rotation, SCALE_RANGE, p_scale))
    if dummy_2d:
        transforms.append(Convert2DTo3DTransform())
    intensity: list[tuple[str, AbstractTransform]] = [
        ("noise", GaussianNoiseTransform(noise_variance=NOISE_SIGMA, p_per_sample=P_NOISE, per_channel=False)),
        ("blur", GaussianBlurTransform(BLUR_SIGMA, different_sigma_per_channel=True, different_sigma_per_axis=True,
                                       p_per_sample=P_BLUR, p_per_channel=P_BLUR_PER_CHANNEL)),
        ("brightness", MultiplicativeBrightnessTransform(BRIGHTNESS_RANGE, p_per_sample=P_BRIGHTNESS)),
        ("contrast", ContrastAugmentationTransform(CONTRAST_RANGE, preserve_range=True, per_channel=True,
                                                   p_per_sample=P_CONTRAST)),
        ("low_resolution", SimulateLowResolutionTransform(
            zoom_range=LOW_RES_ZOOM, per_channel=True, p_per_channel=P_LOW_RES_PER_CHANNEL, order_downsample=0,
            order_upsample=1, p_per_sample=P_LOW_RES, ignore_axes=(0,) if dummy_2d else None)),
        ("gamma_inverted", GammaTransform(GAMMA_RANGE, invert_image=True, per_channel=True, retain_stats=True,
                                          p_per_sample=P_GAMMA_INVERTED)),
        ("gamma", GammaTransform(GAMMA_RANGE, invert_image=False, per_channel=True, retain_stats=True,
                                 p_per_sample=P_GAMMA)),
    ]
    transforms += [t for name, t in intensity if name not in off]
    if mirror_axes and "mirror" not in off:
        transforms.append(MirrorTransform(tuple(mirror_axes)))
    masked = [c for c, use in enumerate(use_mask_for_norm) if use]
    if masked:
        transforms.append(MaskOutsideNonzeroTransform(masked))
    transforms.append(RemoveLabelTransform(-1, outside_label))
    if cascade_num_classes:
        transforms += cascade_transforms(cascade_num_classes, augment=True)
    transforms.append(DeepSupervisionTargetsTransform(deep_supervision_scales))
    return Compose(transforms)


def batchgenerators_spatial(
    patch_size: Sequence[int],
    rotation: Rotation,
    elastic: bool,
    p_rotation: float = P_ROTATION,
    p_scale: float = P_SCALE,
) -> SpatialTransform:
    """batchgenerators' SpatialTransform at the reference settings (used for elastic deformation)."""
    return SpatialTransform(
        list(patch_size),
        patch_center_dist_from_border=0,
        do_elastic_deform=elastic, alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA,
        do_rotation=True, angle_x=rotation[0], angle_y=rotation[1], angle_z=rotation[2], p_rot_per_axis=1,
        do_scale=True, scale=SCALE_RANGE,
        border_mode_data="constant", border_cval_data=0, order_data=1,
        border_mode_seg="constant", border_cval_seg=-1, order_seg=1,
        random_crop=False,
        p_el_per_sample=P_ELASTIC, p_scale_per_sample=p_scale, p_rot_per_sample=p_rotation,
        independent_scale_for_each_axis=False,
    )


def validation_transforms(deep_supervision_scales: Sequence[Sequence[float]] | None,
                          cascade_num_classes: int = 0, outside_label: int = 0) -> Compose:
    """Only the label bookkeeping (reference steps 13, 14 and 16): no augmentation on validation patches."""
    cascade = cascade_transforms(cascade_num_classes, augment=False) if cascade_num_classes else []
    return Compose([RemoveLabelTransform(-1, outside_label), *cascade,
                    DeepSupervisionTargetsTransform(deep_supervision_scales)])
