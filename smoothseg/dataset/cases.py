"""Case discovery from nnU-Net v2 file names, and the one parser of those names.

Images are ``images{Tr,Ts}/<case>_<CCCC><ending>`` (``CCCC`` the 4-digit channel) and labels are
``labels{Tr,Ts}/<case><ending>``. A case is any id that has at least one image or one label file;
what is missing is for :mod:`smoothseg.dataset.verify` to report, not for discovery to hide.
Every other place that needs a case id from a file name (prediction inputs, evaluation folders, converters) uses
:func:`parse_image_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from smoothseg.dataset.io import image_ending

SPLITS = ("Tr", "Ts")
#: The folder suffix of the images without labels (``imagesUnlabelled``), listed in ``dataset.json``.
UNLABELLED = "Unlabelled"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class ImageName(NamedTuple):
    """A parsed image file name: case id, channel (None without an ``_CCCC`` suffix) and the file ending."""

    case_id: str
    channel: int | None
    ending: str


def parse_image_name(name: str, file_ending: str | None = None) -> ImageName | None:
    """``<case>_<CCCC><ending>`` -> (case, CCCC, ending); ``<case><ending>`` -> (case, None, ending); else None.

    ``file_ending`` requires that ending exactly (a dataset's declared one); without it any image ending of
    :data:`smoothseg.dataset.io.IMAGE_ENDINGS` is recognised (case-insensitively). Hidden files give None.
    """
    if name.startswith("."):
        return None
    if file_ending is not None:
        ending = file_ending if name.endswith(file_ending) else None
    else:
        ending = image_ending(name)
    if ending is None or len(name) == len(ending):
        return None
    stem = name[: -len(ending)]
    match = _CHANNEL_RE.match(stem)
    if match:
        return ImageName(match.group("case"), int(match.group("channel")), ending)
    return ImageName(stem, None, ending)


def case_id_of(path: str | Path) -> str:
    """The case id of an image or label file (``<case>_0000.nii.gz`` and ``<case>.nii.gz`` both give ``<case>``)."""
    parsed = parse_image_name(Path(path).name)
    return parsed.case_id if parsed is not None else Path(path).name


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: channel index -> image path, and the label path if there is one."""

    case_id: str
    split: str
    images: dict[int, Path] = field(default_factory=dict)
    label: Path | None = None

    def image(self, channel: int = 0) -> Path:
        return self.images[channel]


def image_path(dataset_dir: Path, split: str, case_id: str, file_ending: str, channel: int = 0) -> Path:
    return Path(dataset_dir) / f"images{split}" / f"{case_id}_{channel:04d}{file_ending}"


def label_path(dataset_dir: Path, split: str, case_id: str, file_ending: str) -> Path:
    return Path(dataset_dir) / f"labels{split}" / f"{case_id}{file_ending}"


def list_cases(dataset_dir: str | Path, file_ending: str, split: str = "Tr") -> list[CaseFiles]:
    """All cases of one split, sorted by id, as found on disk."""
    if split not in (*SPLITS, UNLABELLED):
        raise ValueError(f"split must be one of {(*SPLITS, UNLABELLED)}, got {split!r}")
    dataset_dir = Path(dataset_dir)
    images: dict[str, dict[int, Path]] = {}
    image_dir = dataset_dir / f"images{split}"
    if image_dir.is_dir():
        for p in sorted(image_dir.iterdir()):
            parsed = parse_image_name(p.name, file_ending)
            if parsed is not None and parsed.channel is not None:
                images.setdefault(parsed.case_id, {})[parsed.channel] = p
    labels: dict[str, Path] = {}
    label_dir = dataset_dir / f"labels{split}"
    if label_dir.is_dir():
        for p in sorted(label_dir.iterdir()):
            if p.name.endswith(file_ending) and not p.name.startswith("."):
                labels[p.name[: -len(file_ending)]] = p
    ids = sorted(set(images) | set(labels))
    return [CaseFiles(cid, split, images.get(cid, {}), labels.get(cid)) for cid in ids]
