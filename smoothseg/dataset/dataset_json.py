"""The typed model of a raw dataset's ``dataset.json``.

The layout is nnU-Net v2's (``channel_names``, ``labels``, ``numTraining``, ``file_ending``), plus two
optional smoothseg keys:

* ``task_regions``: ``{"liver": [1, 2, 3], "tumor": [2]}``, the raw labels that make up the liver
  region and the tumour. When absent they are derived from the label names.
* ``clinical``: ``{"file": "clinical.csv", "case_id_column": "case_id", "features": [...],
  "categorical": [...]}``, the clinical table used for the TLVR regression.
* ``imagesUnlabelled``: ``["case_a", "case_b", ...]``, cases with an image
  (``imagesUnlabelled/<case>_0000<ending>``) and a clinical row but no label map; the tumour model learns from
  them through the knowledge term only (:mod:`smoothseg.training.unlabelled`).

Every schema problem raises :class:`~smoothseg.errors.DatasetSchemaError` naming the key and the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothseg.atomic import write_json
from smoothseg.errors import DatasetSchemaError

_TUMOUR_NAMES = ("tumor", "tumour", "mass", "lesion", "cancer", "hcc")
_LIVER_NAMES = ("liver",)
_KNOWN_KEYS = {"name", "channel_names", "labels", "numTraining", "file_ending", "task_regions", "clinical",
               "imagesUnlabelled"}


@dataclass(frozen=True)
class TaskRegions:
    """Raw label values that form the liver region (global task) and the tumour (local task)."""

    liver: tuple[int, ...]
    tumor: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"liver": list(self.liver), "tumor": list(self.tumor)}


@dataclass(frozen=True)
class ClinicalSpec:
    """Where the clinical table lives and which of its columns feed the TLVR regression."""

    file: str
    case_id_column: str = "case_id"
    features: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f not in self.categorical)

    def to_dict(self) -> dict:
        return {"file": self.file, "case_id_column": self.case_id_column, "features": list(self.features),
                "categorical": list(self.categorical)}


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``dataset.json``. ``extra`` keeps unknown keys so a round trip loses nothing."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    task_regions: TaskRegions
    clinical: ClinicalSpec | None = None
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    unlabelled: tuple[str, ...] = ()  # ``imagesUnlabelled``: case ids with an image and clinical data, no label

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels.values()))

    @classmethod
    def from_file(cls, path: str | Path) -> DatasetSpec:
        path = Path(path)
        if not path.is_file():
            raise DatasetSchemaError(path, None, "dataset.json not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetSchemaError(path, None, f"not valid JSON ({exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = "dataset.json") -> DatasetSpec:
        path = Path(path)
        if not isinstance(data, dict):
            raise DatasetSchemaError(path, None, "top level must be a JSON object")

        def fail(key: str, problem: str):
            raise DatasetSchemaError(path, key, problem)

        for key in ("channel_names", "labels", "numTraining", "file_ending"):
            if key not in data:
                fail(key, "required key is missing")

        channels = data["channel_names"]
        if not isinstance(channels, dict) or not channels:
            fail("channel_names", "must be a non-empty object like {\"0\": \"CT\"}")
        if sorted(channels) != [str(i) for i in range(len(channels))]:
            fail("channel_names", f"keys must be \"0\"..\"{len(channels) - 1}\", got {sorted(channels)}")
        channel_names = {str(k): str(v) for k, v in channels.items()}

        labels_raw = data["labels"]
        if not isinstance(labels_raw, dict) or not labels_raw:
            fail("labels", "must be a non-empty object mapping label names to integer values")
        labels: dict[str, int] = {}
        for lname, value in labels_raw.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail("labels", f"value of '{lname}' must be a non-negative integer (region lists are not "
                               f"supported), got {value!r}")
            labels[str(lname)] = value
        if len(set(labels.values())) != len(labels):
            fail("labels", "label values must be unique")
        if 0 not in labels.values():
            fail("labels", "a background label with value 0 is required")

        num_training = data["numTraining"]
        if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
            fail("numTraining", f"must be a non-negative integer, got {num_training!r}")

        file_ending = data["file_ending"]
        if not isinstance(file_ending, str) or not re.fullmatch(r"\.[A-Za-z0-9.]+", file_ending):
            fail("file_ending", f"must be a file ending such as \".nii.gz\", got {file_ending!r}")

        task_regions = _parse_task_regions(data.get("task_regions"), labels, path)
        clinical = _parse_clinical(data.get("clinical"), path)
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            fail("name", "must be a string")
        unlabelled = data.get("imagesUnlabelled", [])
        if not isinstance(unlabelled, list) or not all(isinstance(c, str) and c for c in unlabelled):
            fail("imagesUnlabelled", "must be a list of case ids (their images lie in imagesUnlabelled/)")
        if len(set(unlabelled)) != len(unlabelled):
            fail("imagesUnlabelled", "lists a case id twice")
        extra = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
        return cls(channel_names, labels, num_training, file_ending, task_regions, clinical, name, extra,
                   tuple(unlabelled))

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out.update({
            "channel_names": dict(self.channel_names),
            "labels": dict(self.labels),
            "numTraining": self.num_training,
            "file_ending": self.file_ending,
            "task_regions": self.task_regions.to_dict(),
        })
        if self.clinical is not None:
            out["clinical"] = self.clinical.to_dict()
        if self.unlabelled:
            out["imagesUnlabelled"] = list(self.unlabelled)
        out.update(self.extra)
        return out

    def save(self, path: str | Path) -> Path:
        return write_json(self.to_dict(), path)


def _labels_named(labels: dict[str, int], names: tuple[str, ...]) -> list[int]:
    return sorted(v for k, v in labels.items() if any(n in k.lower() for n in names) and v != 0)


def _parse_task_regions(raw: Any, labels: dict[str, int], path: Path) -> TaskRegions:
    declared = set(labels.values())
    if raw is None:
        tumour = _labels_named(labels, _TUMOUR_NAMES)
        liver = _labels_named(labels, _LIVER_NAMES)
        if not liver:
            raise DatasetSchemaError(path, "task_regions", "absent, and no label is named 'liver' to derive it from; "
                                     "add \"task_regions\": {\"liver\": [...], \"tumor\": [...]}")
        return TaskRegions(tuple(sorted(set(liver) | set(tumour))), tuple(tumour))
    if not isinstance(raw, dict) or set(raw) != {"liver", "tumor"}:
        raise DatasetSchemaError(path, "task_regions", "must be an object with exactly the keys 'liver' and 'tumor'")
    parsed = {}
    for key in ("liver", "tumor"):
        values = raw[key]
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DatasetSchemaError(path, f"task_regions.{key}", "must be a list of integer label values")
        unknown = sorted(set(values) - declared)
        if unknown:
            raise DatasetSchemaError(path, f"task_regions.{key}", f"values {unknown} are not declared in 'labels'")
        if 0 in values:
            raise DatasetSchemaError(path, f"task_regions.{key}", "must not contain the background value 0")
        parsed[key] = tuple(sorted(set(values)))
    if not parsed["liver"]:
        raise DatasetSchemaError(path, "task_regions.liver", "must name at least one label")
    if not set(parsed["tumor"]) <= set(parsed["liver"]):
        raise DatasetSchemaError(path, "task_regions.tumor", "tumour labels must be part of the liver region")
    return TaskRegions(parsed["liver"], parsed["tumor"])


#: Column names (lower case, letters and digits only) that measure the segmentation itself: a TLVR, or a volume or
#: voxel count of the tumour, lesions or liver. Clinical sizes (e.g. HCC-TACE-Seg's ``Tr_Size``, a diameter reported
#: at diagnosis) are not matched.
_DERIVED = re.compile(r"tlvr|(tumou?r|lesion|liver|hcc).*(vol|voxel)|(vol|voxel).*(tumou?r|lesion|liver)|"
                      r"tumou?r.*liver.*ratio")


def is_segmentation_derived(column: str) -> bool:
    """Whether a clinical column name says it is computed from the segmentation (see ``_DERIVED``)."""
    return bool(_DERIVED.search(re.sub(r"[^a-z0-9]", "", column.lower())))


def _parse_clinical(raw: Any, path: Path) -> ClinicalSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DatasetSchemaError(path, "clinical", "must be an object")
    if not isinstance(raw.get("file"), str) or not raw["file"]:
        raise DatasetSchemaError(path, "clinical.file", "must name the clinical table, e.g. \"clinical.csv\"")
    case_col = raw.get("case_id_column", "case_id")
    if not isinstance(case_col, str) or not case_col:
        raise DatasetSchemaError(path, "clinical.case_id_column", "must be a column name")
    lists = {}
    for key in ("features", "categorical"):
        values = raw.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise DatasetSchemaError(path, f"clinical.{key}", "must be a list of column names")
        lists[key] = tuple(values)
    stray = sorted(set(lists["categorical"]) - set(lists["features"]))
    if stray:
        raise DatasetSchemaError(path, "clinical.categorical", f"{stray} are not listed in clinical.features")
    if case_col in lists["features"]:
        raise DatasetSchemaError(path, "clinical.features", f"the case id column '{case_col}' cannot be a feature")
    derived = [f for f in lists["features"] if is_segmentation_derived(f)]
    if derived:
        raise DatasetSchemaError(path, "clinical.features", f"{derived} look derived from the segmentation (tumour or "
                                 "liver volume, TLVR); a feature must be known without the labels, or the TLVR term "
                                 "learns the labels back. Keep such columns in the table, but not among the features")
    unknown = sorted(set(raw) - {"file", "case_id_column", "features", "categorical"})
    if unknown:
        raise DatasetSchemaError(path, "clinical", f"unknown keys {unknown}")
    return ClinicalSpec(raw["file"], case_col, lists["features"], lists["categorical"])
