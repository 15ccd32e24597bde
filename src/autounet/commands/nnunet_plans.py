"""Translate an nnU-Net v2 plans.json + dataset.json into autounet's `Plans` (one configuration).

Only what autounet reproduces exactly is accepted: nnU-Net's PlainConvUNet and
ResidualEncoderUNet (dynamic_network_architectures) with InstanceNorm (eps 1e-5, affine),
LeakyReLU (slope 0.01), no dropout; nnU-Net's default resampling functions; the ZScore, CT,
NoNormalization and RescaleTo01 schemes. Anything else is refused with an error that names the
plans key and the value autounet does not know, rather than imported into a model that would
predict something different. Nothing of nnU-Net is imported: the file is read as JSON.
"""

from __future__ import annotations

from typing import Any

from autounet.errors import AutounetError
from autounet.networks.description import NetworkPlan
from autounet.planners.plans import ConfigurationPlan, Plans, ResamplingPlan
from autounet.task.fingerprint import IntensityProperties
from autounet.task.labels import parse_named_labels, with_regions_class_order

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
NETWORK_CLASSES = {PLAIN: "plain_unet", RESENC: "resenc_unet"}
NORMALIZATION = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none",
                 "RescaleTo01Normalization": "rescale_0_1"}
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing")
NNUNET_ANISOTROPY_THRESHOLD = 3.0
IMPORTABLE_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
#: arch_kwargs autounet reproduces; the values of the optional ones must be their defaults.
_REQUIRED_ARCH = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder",
                  "conv_bias", "norm_op", "norm_op_kwargs", "nonlin")
_DEFAULT_ARCH: dict[str, tuple[Any, ...]] = {
    "dropout_op": (None,), "dropout_op_kwargs": (None, {}), "deep_supervision": (True, False),
    "nonlin_first": (False,), "stochastic_depth_p": (0, 0.0), "squeeze_excitation": (False,),
    "bottleneck_channels": (None,), "pool_type": ("conv",), "pool": ("conv",), "disable_default_stem": (False,),
    "block": ("BasicBlockD", "dynamic_network_architectures.building_blocks.residual.BasicBlockD"),
}
_INTERNAL_KEYS = ("_kw_requires_import",)


def _refuse(where: str, what: str) -> AutounetError:
    return AutounetError(f"{where}: {what}; autounet cannot reproduce this nnU-Net model")


def merged_configuration(plans: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """The configuration `name` with what it `inherits_from` filled in (nnU-Net's inheritance)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = sorted(configurations) if isinstance(configurations, dict) else []
        raise AutounetError(f"{where}: 'configurations' has no '{name}' (planned: {known})")
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None:
        if current not in configurations or len(chain) > len(configurations):
            raise AutounetError(f"{where}: configuration '{name}' inherits from unknown or circular '{current}'")
        chain.append(configurations[current])
        current = configurations[current].get("inherits_from")
    merged: dict[str, Any] = {}
    for entry in reversed(chain):
        merged.update(entry)
    return merged


def _op_name(value: Any) -> str:
    """'torch.nn.modules.conv.Conv3d' and 'torch.nn.Conv3d' -> 'Conv3d'; only torch.nn classes count."""
    text = str(value)
    return text.rsplit(".", 1)[-1] if text.startswith("torch.nn.") else text


def network_plan(architecture: dict[str, Any], dims: int, where: str) -> tuple[str, NetworkPlan]:
    """(autounet network name, NetworkPlan) from the plans' `architecture` entry, or a refusal."""
    class_name = architecture.get("network_class_name")
    if class_name not in NETWORK_CLASSES:
        raise _refuse(f"{where}.network_class_name", f"unknown network '{class_name}' (known: {sorted(NETWORK_CLASSES)})")
    kwargs = architecture.get("arch_kwargs") or {}
    encoder_key = "n_blocks_per_stage" if class_name == RESENC else "n_conv_per_stage"
    missing = [k for k in (*_REQUIRED_ARCH, encoder_key) if k not in kwargs]
    if missing:
        raise _refuse(f"{where}.arch_kwargs", f"missing {missing}")
    unknown = sorted(set(kwargs) - set(_REQUIRED_ARCH) - set(_DEFAULT_ARCH) - {encoder_key, "nonlin_kwargs"}
                     - set(_INTERNAL_KEYS))
    if unknown:
        raise _refuse(f"{where}.arch_kwargs", f"unknown argument(s) {unknown}")
    for key, allowed in _DEFAULT_ARCH.items():
        if key in kwargs and kwargs[key] not in allowed:
            raise _refuse(f"{where}.arch_kwargs.{key}", f"unsupported value {kwargs[key]!r} (supported: {list(allowed)})")
    expected = {"conv_op": f"Conv{dims}d", "norm_op": f"InstanceNorm{dims}d", "nonlin": "LeakyReLU"}
    for key, name in expected.items():
        if _op_name(kwargs[key]) != name or not str(kwargs[key]).startswith("torch.nn."):
            raise _refuse(f"{where}.arch_kwargs.{key}", f"unsupported op '{kwargs[key]}' (supported: torch.nn.{name})")
    norm = kwargs["norm_op_kwargs"] or {}
    if float(norm.get("eps", 1e-5)) != 1e-5 or norm.get("affine", True) is not True or \
            set(norm) - {"eps", "affine"}:
        raise _refuse(f"{where}.arch_kwargs.norm_op_kwargs", f"unsupported {norm} (supported: eps 1e-05, affine true)")
    nonlin = dict(kwargs.get("nonlin_kwargs") or {})
    nonlin.pop("inplace", None)
    if set(nonlin) - {"negative_slope"} or float(nonlin.get("negative_slope", 0.01)) != 0.01:
        raise _refuse(f"{where}.arch_kwargs.nonlin_kwargs", f"unsupported {kwargs.get('nonlin_kwargs')} "
                                                            f"(supported: negative_slope 0.01)")
    n = int(kwargs["n_stages"])
    as_lists = {k: [list(v) if isinstance(v, (list, tuple)) else [int(v)] * dims for v in kwargs[k]]
                for k in ("kernel_sizes", "strides")}
    features = kwargs["features_per_stage"]
    features = [int(features)] * n if isinstance(features, int) else [int(f) for f in features]
    encoder = kwargs[encoder_key]
    encoder = [int(encoder)] * n if isinstance(encoder, int) else [int(c) for c in encoder]
    decoder = kwargs["n_conv_per_stage_decoder"]
    decoder = [int(decoder)] * (n - 1) if isinstance(decoder, int) else [int(c) for c in decoder]
    plan = NetworkPlan(architecture=NETWORK_CLASSES[class_name], features_per_stage=features,
                       kernel_sizes=as_lists["kernel_sizes"], strides=as_lists["strides"], n_conv_encoder=encoder,
                       n_conv_decoder=decoder,
                       residual_shortcut="project_on_channel_change" if class_name == RESENC else "project")
    if plan.n_stages != n:
        raise _refuse(f"{where}.arch_kwargs.features_per_stage", f"{plan.n_stages} entries for n_stages {n}")
    plan.validate(f"{where}.arch_kwargs")
    return plan.architecture, plan


def _resampling(cfg: dict[str, Any], where: str) -> ResamplingPlan:
    """nnU-Net's default resampling functions map onto autounet's; their kwargs give the orders."""
    orders: dict[str, int] = {}
    order_z: set[int] = set()
    for kind in ("data", "seg", "probabilities"):
        fn = cfg.get(f"resampling_fn_{kind}")
        if fn not in RESAMPLING_FUNCTIONS:
            raise _refuse(f"{where}.resampling_fn_{kind}", f"unknown resampling function '{fn}'")
        kw = cfg.get(f"resampling_fn_{kind}_kwargs") or {}
        if kw.get("force_separate_z") is not None:
            raise _refuse(f"{where}.resampling_fn_{kind}_kwargs.force_separate_z",
                          f"{kw['force_separate_z']!r} is not supported (only null, the default)")
        orders[kind] = int(kw.get("order", 3 if kind == "data" else 1))
        order_z.add(int(kw.get("order_z", 0)))
    if len(order_z) != 1:
        raise _refuse(f"{where}.resampling_fn_*_kwargs.order_z", f"differs between data, seg and probabilities "
                                                                f"({sorted(order_z)})")
    return ResamplingPlan(order_data=orders["data"], order_seg=orders["seg"],
                          order_probabilities=orders["probabilities"], order_z=order_z.pop(),
                          anisotropy_threshold=NNUNET_ANISOTROPY_THRESHOLD)


def _configuration(plans: dict[str, Any], name: str, mirror_axes: list[int] | None,
                   where: str) -> tuple[str, ConfigurationPlan]:
    if name not in IMPORTABLE_CONFIGURATIONS:
        raise _refuse(f"{where}.configurations.{name}", f"configuration '{name}' is not importable "
                                                        f"(supported: {list(IMPORTABLE_CONFIGURATIONS)}; a cascade "
                                                        f"needs its first stage, which autounet does not map yet)")
    cfg = merged_configuration(plans, name, where)
    at = f"{where}.configurations.{name}"
    if cfg.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
        raise _refuse(f"{at}.preprocessor_name", f"unknown preprocessor '{cfg['preprocessor_name']}'")
    if cfg.get("previous_stage") or name == "3d_cascade_fullres":
        raise _refuse(f"{at}.previous_stage", "cascade stages are not supported")
    schemes = []
    for i, scheme in enumerate(cfg.get("normalization_schemes") or []):
        if scheme not in NORMALIZATION:
            raise _refuse(f"{at}.normalization_schemes[{i}]", f"unknown normalization '{scheme}' "
                                                              f"(supported: {sorted(NORMALIZATION)})")
        schemes.append(NORMALIZATION[scheme])
    patch = [int(p) for p in cfg["patch_size"]]
    network_name, net = network_plan(cfg.get("architecture") or {}, len(patch), f"{at}.architecture")
    median = [max(1, int(round(float(v)))) for v in cfg.get("median_image_size_in_voxels", patch)]
    plan = ConfigurationPlan(
        name=name, data_identifier=str(cfg.get("data_identifier", name)), spacing=[float(s) for s in cfg["spacing"]],
        patch_size=patch, batch_size=int(cfg.get("batch_size", 2)), median_shape=median, network=net,
        normalization=schemes, use_mask_for_norm=[bool(u) for u in cfg.get("use_mask_for_norm", [])],
        batch_dice=bool(cfg.get("batch_dice", False)), estimated_memory_bytes=0, resampling=_resampling(cfg, at),
        mirror_axes=mirror_axes, reasons={"imported": f"translated from nnU-Net plans '{plans.get('plans_name')}'"},
        window_arithmetic="nnunet_fp16")
    plan.validate(at)
    return network_name, plan


def translate_plans(plans: dict[str, Any], dataset: dict[str, Any], configuration: str,
                    mirror_axes: list[int] | None, where: str) -> tuple[Plans, str]:
    """(autounet Plans holding `configuration`, autounet network name); `where` names the plans file."""
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise _refuse(f"{where}.label_manager", f"unknown label manager '{plans.get('label_manager')}'")
    spec = with_regions_class_order(parse_named_labels(dataset.get("labels") or {}, f"{where}/../dataset.json"),
                                    dataset.get("regions_class_order"), f"{where}/../dataset.json")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    forward = [int(a) for a in plans["transpose_forward"]]
    backward = [int(a) for a in plans["transpose_backward"]]
    spacing_t = plans.get("original_median_spacing_after_transp") or [1.0, 1.0, 1.0]
    shape_t = plans.get("original_median_shape_after_transp") or [1, 1, 1]
    properties = {str(c): IntensityProperties(**{k: float(v[k]) for k in IntensityProperties.__dataclass_fields__})
                  for c, v in (plans.get("foreground_intensity_properties_per_channel") or {}).items()}
    network_name, cfg = _configuration(plans, configuration, mirror_axes, where)
    result = Plans(
        task=str(plans.get("dataset_name") or dataset.get("name")), channel_names={str(k): str(v) for k, v in
                                                                               channels.items()},
        labels=dict(spec.labels), transpose_forward=forward, transpose_backward=backward,
        original_median_spacing=[float(spacing_t[b]) for b in backward],
        original_median_shape=[int(round(float(shape_t[b]))) for b in backward],
        foreground_intensity_properties=properties, gpu_memory_target_gb=8.0, configurations={configuration: cfg},
        is_2d_data=configuration == "2d" and "3d_fullres" not in (plans.get("configurations") or {}),
        reasons={"imported": f"nnU-Net v2 plans '{plans.get('plans_name')}' of {plans.get('dataset_name')}"},
        regions=spec.regions, regions_class_order=spec.regions_class_order, ignore_label=spec.ignore_label,
        region_averaging="logits")
    result.validate(where)
    for c, scheme in enumerate(cfg.normalization):
        if scheme == "ct" and str(c) not in properties:
            raise _refuse(f"{where}.foreground_intensity_properties_per_channel",
                          f"no entry for channel {c}, which CTNormalization needs")
    return result, network_name
