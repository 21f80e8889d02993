"""Case discovery from nnU-Net v2 file names.

Images are ``images{Tr,Ts}/<case>_<CCCC><ending>`` (``CCCC`` the 4-digit channel) and labels are
``labels{Tr,Ts}/<case><ending>``. A case is any id that has at least one image or one label file;
what is missing is for :mod:`smoothseg.dataset.verify` to report, not for discovery to hide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("Tr", "Ts")


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
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset_dir = Path(dataset_dir)
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(file_ending)}$")
    images: dict[str, dict[int, Path]] = {}
    image_dir = dataset_dir / f"images{split}"
    if image_dir.is_dir():
        for p in sorted(image_dir.iterdir()):
            m = pattern.match(p.name)
            if m and not p.name.startswith("."):
                images.setdefault(m.group("case"), {})[int(m.group("ch"))] = p
    labels: dict[str, Path] = {}
    label_dir = dataset_dir / f"labels{split}"
    if label_dir.is_dir():
        for p in sorted(label_dir.iterdir()):
            if p.name.endswith(file_ending) and not p.name.startswith("."):
                labels[p.name[: -len(file_ending)]] = p
    ids = sorted(set(images) | set(labels))
    return [CaseFiles(cid, split, images.get(cid, {}), labels.get(cid)) for cid in ids]
