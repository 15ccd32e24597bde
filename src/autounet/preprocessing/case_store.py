"""The on-disk store of preprocessed cases of one configuration (`<preprocessed>/<task>/<data_identifier>/`).

Per case: `<case>.npy` (float32 (C, Z, Y, X)), `<case>_seg.npy` (int16 (Z, Y, X) class indices,
-1 outside the nonzero mask), `<case>_locations.npz` (keys "1".."K-1", int32 (n, 3)) and
`<case>.json` (CaseProperties). Arrays are uncompressed .npy so the training loader can
memory-map a case and read one patch without reading the whole file. Every file is written
atomically and the .json last: a case is finished exactly when its .json and arrays exist,
which makes interrupted runs safe to resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from autounet.errors import DatasetError
from autounet.io.atomic import TMP_PREFIX, save_npy, save_npz
from autounet.preprocessing.case_properties import CaseProperties, load_case_properties, save_case_properties

log = logging.getLogger(__name__)

_SEG_SUFFIX = "_seg.npy"
#: the folder's stamp (preprocessing.data_folders): which preprocessing the arrays were made with
STAMP_FILE = ".preprocessing.json"
_LOCATIONS_SUFFIX = "_locations.npz"


class CaseStore:
    """Read and write the preprocessed cases in one folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def data_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.npy"

    def seg_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}{_SEG_SUFFIX}"

    def locations_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}{_LOCATIONS_SUFFIX}"

    def properties_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.json"

    def is_finished(self, case_id: str) -> bool:
        """True when the case's properties (written last) and all its arrays exist."""
        return all(
            p.is_file()
            for p in (
                self.properties_path(case_id),
                self.data_path(case_id),
                self.seg_path(case_id),
                self.locations_path(case_id),
            )
        )

    def case_ids(self) -> list[str]:
        """Finished cases, sorted."""
        if not self.folder.is_dir():
            return []
        ids = (p.name[: -len(".json")] for p in self.folder.glob("*.json") if not p.name.startswith((TMP_PREFIX, ".")))
        return sorted(c for c in ids if self.is_finished(c))

    def remove_temporary_files(self) -> int:
        """Delete `.tmp-*` leftovers of an interrupted run; returns how many were removed."""
        if not self.folder.is_dir():
            return 0
        stray = [p for p in self.folder.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_file()]
        for p in stray:
            p.unlink(missing_ok=True)
        if stray:
            log.info("removed %d unfinished temporary file(s) in %s", len(stray), self.folder)
        return len(stray)

    def _require(self, case_id: str) -> None:
        if not self.is_finished(case_id):
            raise DatasetError(
                f"{self.properties_path(case_id)}: preprocessed case '{case_id}' is missing or incomplete; "
                f"run `autounet plan_and_preprocess <task>` again"
            )

    def properties(self, case_id: str) -> CaseProperties:
        self._require(case_id)
        return load_case_properties(self.properties_path(case_id))

    def load(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
        """(data (C, Z, Y, X), seg (Z, Y, X), properties); memory-mapped read-only by default."""
        props = self.properties(case_id)
        mode = "r" if mmap else None
        data = np.load(self.data_path(case_id), mmap_mode=mode, allow_pickle=False)
        seg = np.load(self.seg_path(case_id), mmap_mode=mode, allow_pickle=False)
        return data, seg, props

    def locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Sampled voxel coordinates per foreground class index, int32 (n, 3)."""
        self._require(case_id)
        with np.load(self.locations_path(case_id), allow_pickle=False) as npz:
            return {int(k): npz[k] for k in sorted(npz.files, key=int)}

    def write_case(
        self,
        case_id: str,
        data: np.ndarray,
        seg: np.ndarray,
        props: CaseProperties,
        locations: dict[int, np.ndarray],
    ) -> None:
        """Write one case atomically, properties last so a crash never leaves a 'finished' case."""
        if data.ndim != 4 or seg.shape != data.shape[1:]:
            raise ValueError(
                f"case {case_id}: data {data.shape} must be (C, Z, Y, X) with seg {seg.shape} = (Z, Y, X)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        save_npy(self.data_path(case_id), data.astype(np.float32, copy=False))
        save_npy(self.seg_path(case_id), seg.astype(np.int16, copy=False))
        save_npz(
            self.locations_path(case_id),
            **{str(k): np.asarray(v, dtype=np.int32).reshape(-1, 3) for k, v in sorted(locations.items())},
        )
        save_case_properties(props, self.properties_path(case_id))
