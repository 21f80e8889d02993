"""A raw dataset folder as one object: its ``dataset.json``, its cases and its clinical table."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from smoothseg.dataset.cases import UNLABELLED, CaseFiles, list_cases
from smoothseg.dataset.clinical import load_clinical_table
from smoothseg.dataset.dataset_json import DatasetSpec
from smoothseg.paths import find_dataset


@dataclass
class RawDataset:
    """``RawDataset(folder)`` or ``RawDataset.find(7)``; parsing ``dataset.json`` happens on creation."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.spec = DatasetSpec.from_file(self.folder / "dataset.json")

    @classmethod
    def find(cls, identifier: str | int, root: Path | None = None) -> RawDataset:
        return cls(find_dataset(identifier, root))

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def dataset_json(self) -> Path:
        return self.folder / "dataset.json"

    def cases(self, split: str = "Tr") -> list[CaseFiles]:
        return list_cases(self.folder, self.spec.file_ending, split)

    @cached_property
    def training_cases(self) -> list[CaseFiles]:
        return self.cases("Tr")

    @cached_property
    def test_cases(self) -> list[CaseFiles]:
        return self.cases("Ts")

    @cached_property
    def unlabelled_cases(self) -> list[CaseFiles]:
        """The cases ``dataset.json`` lists under ``imagesUnlabelled``, in that order (images only; a listed case
        without an image file has none, for :mod:`smoothseg.dataset.verify` to report)."""
        found = {c.case_id: c for c in self.cases(UNLABELLED)}
        return [CaseFiles(c, UNLABELLED, found[c].images if c in found else {}) for c in self.spec.unlabelled]

    def clinical(self) -> pd.DataFrame | None:
        """The clinical table indexed by case id, or None when the dataset declares none."""
        if self.spec.clinical is None:
            return None
        return load_clinical_table(self.folder, self.spec.clinical)
