"""Which folder of `preprocessed/<task>/` holds a configuration's arrays, and whether they still fit.

The default plans keep the plain names (`3d_fullres`, `2d`, ...). Other plans of the task (a
preset, transferred plans) reuse the default plans' folder of a configuration when they would
preprocess it identically (same grid, normalization and label mapping: `Plans.preprocessing_key`),
and otherwise get their own (`3d_fullres__resenc-l`). Every folder carries a stamp
(`.preprocessing.json`) with the key it was made for, so data written for other settings is never
trained on silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

from autounet.errors import AutounetError, PlansError
from autounet.io.atomic import read_json, write_json
from autounet.planners.plans import DEFAULT_PLANS_NAME, Plans, load_plans, plans_file_name
from autounet.preprocessing.case_store import STAMP_FILE

log = logging.getLogger(__name__)


def assign_data_identifiers(plans: Plans, preprocessed_dir: Path) -> dict[str, str]:
    """Set the data folder of every configuration of non-default `plans`; returns {configuration: why}."""
    if plans.name == DEFAULT_PLANS_NAME:
        return {}
    default_path = Path(preprocessed_dir) / plans_file_name(DEFAULT_PLANS_NAME)
    default = None
    if default_path.is_file():
        try:
            default = load_plans(default_path)
        except PlansError as exc:
            log.warning("%s; the %s plans get their own preprocessed folders", exc, plans.name)
    why: dict[str, str] = {}
    for name, cfg in plans.configurations.items():
        key = plans.preprocessing_key(name)
        if (default is not None and name in default.configurations
                and default.preprocessing_key(name) == key):
            cfg.data_identifier = default.configuration(name).data_identifier
            why[name] = f"shares the default plans' preprocessed '{cfg.data_identifier}' (same grid and normalization)"
        else:
            base = cfg.data_identifier.split("__", 1)[0]
            cfg.data_identifier = f"{base}__{plans.name}"
            why[name] = f"own preprocessed folder '{cfg.data_identifier}' (grid or normalization differ from the default)"
    return why


def read_stamp(folder: Path) -> str | None:
    """The preprocessing key a data folder was written for; None for folders without a stamp."""
    path = Path(folder) / STAMP_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, str):
        raise AutounetError(f"{path}: not a preprocessing stamp (no 'key'); delete the folder and preprocess again")
    return key


def write_stamp(folder: Path, plans: Plans, configuration: str) -> None:
    cfg = plans.configuration(configuration)
    write_json(Path(folder) / STAMP_FILE, {"key": plans.preprocessing_key(configuration), "plans": plans.name,
                                           "configuration": configuration, "spacing": cfg.spacing,
                                           "normalization": cfg.normalization})


def stamp_matches(folder: Path, plans: Plans, configuration: str) -> bool:
    """True where the folder was made for these plans' preprocessing (or predates stamps)."""
    found = read_stamp(folder)
    return found is None or found == plans.preprocessing_key(configuration)


def check_stamp(folder: Path, plans: Plans, configuration: str) -> None:
    """Refuse to train on arrays preprocessed for other settings (e.g. after re-planning the default plans)."""
    if not stamp_matches(folder, plans, configuration):
        raise AutounetError(f"{folder}: preprocessed for other settings than the {plans.name} plans' {configuration} "
                            f"(grid or normalization changed since); run `autounet plan_and_preprocess "
                            f"{plans.task}` again with the options that wrote {plans_file_name(plans.name)}")
