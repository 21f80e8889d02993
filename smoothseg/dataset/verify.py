"""Dataset integrity check: every problem of a raw dataset, reported at once.

Checks, per case: images for every channel and a label exist; each file is readable, 3D, scalar
and finite; image channels and label share size, spacing, origin and direction (within tolerance);
label values are declared in ``dataset.json``. Per dataset: ``numTraining`` matches, and when a
clinical table is declared it loads and has a row for every case. Unlabelled cases (``imagesUnlabelled``): their
images as above, an id no labelled case has, and a clinical row with at least one feature value (it is all they
contribute); images in ``imagesUnlabelled/`` that ``dataset.json`` does not list are reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smoothseg.dataset.cases import CaseFiles
from smoothseg.dataset.dataset_json import DatasetSpec
from smoothseg.dataset.io import Geometry, read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.parallel import map_cases

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (case and file, when known) and what."""

    message: str
    case_id: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        where = " ".join(p for p in (f"[{self.case_id}]" if self.case_id else "",
                                     str(self.path) if self.path else "") if p)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class VerificationReport:
    dataset: Path
    n_training: int = 0
    n_test: int = 0
    n_unlabelled: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        unlabelled = f", {self.n_unlabelled} unlabelled" if self.n_unlabelled else ""
        head = (f"{self.dataset.name}: {self.n_training} training{unlabelled} and {self.n_test} test case(s); "
                f"{len(self.problems)} problem(s)")
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


@dataclass(frozen=True)
class Tolerance:
    """How far image and label geometry may differ: relative spacing, origin in mm, direction entries."""

    spacing: float = 1e-3
    origin_mm: float = 1e-2
    direction: float = 1e-3


def _check_case(case: CaseFiles, spec: DatasetSpec, tol: Tolerance) -> list[Problem]:
    problems: list[Problem] = []
    expected_channels = set(range(spec.num_channels))
    for ch in sorted(expected_channels - set(case.images)):
        problems.append(Problem(f"image for channel {ch} ({spec.channel_names[str(ch)]}) is missing", case.case_id))
    for ch in sorted(set(case.images) - expected_channels):
        problems.append(Problem(f"channel {ch} is not declared in channel_names", case.case_id, case.images[ch]))
    if case.label is None and case.split == "Tr":
        problems.append(Problem("label is missing", case.case_id))

    reference: tuple[Path, tuple[int, ...], Geometry] | None = None

    def compare(path: Path, shape: tuple[int, ...], geometry: Geometry) -> None:
        nonlocal reference
        if reference is None:
            reference = (path, shape, geometry)
            return
        ref_path, ref_shape, ref_geom = reference
        diffs = []
        if shape != ref_shape:
            diffs.append(f"size {shape[::-1]} vs {ref_shape[::-1]}")
        diffs += ref_geom.differences(geometry, spacing_tol=tol.spacing, origin_tol_mm=tol.origin_mm,
                                      direction_tol=tol.direction)
        if diffs:
            problems.append(Problem(f"geometry differs from {ref_path.name}: {'; '.join(diffs)}", case.case_id, path))

    for ch in sorted(set(case.images) & expected_channels):
        try:
            array, geometry = read_image(case.images[ch])
        except SmoothSegError as exc:
            problems.append(Problem(getattr(exc, "problem", str(exc)), case.case_id, case.images[ch]))
            continue
        compare(case.images[ch], array.shape, geometry)
    if case.label is not None:
        try:
            label, geometry = read_image(case.label)
        except SmoothSegError as exc:
            problems.append(Problem(getattr(exc, "problem", str(exc)), case.case_id, case.label))
        else:
            compare(case.label, label.shape, geometry)
            values = np.unique(label)
            if not np.all(np.equal(np.mod(values, 1), 0)):
                problems.append(Problem("label map holds non-integer values", case.case_id, case.label))
            undeclared = sorted(set(values.astype(np.int64).tolist()) - set(spec.label_values))
            if undeclared:
                problems.append(Problem(f"label values {undeclared} are not declared in dataset.json "
                                        f"(declared: {list(spec.label_values)})", case.case_id, case.label))
    return problems


def _check_unlabelled_listing(raw: RawDataset) -> list[Problem]:
    """Unlabelled ids that clash with labelled ones, and images in ``imagesUnlabelled/`` nobody listed."""
    problems = []
    labelled = {c.case_id for c in raw.training_cases + raw.test_cases}
    listed = set(raw.spec.unlabelled)
    for case_id in sorted(listed & labelled):
        problems.append(Problem("listed under imagesUnlabelled but also a labelled (imagesTr/imagesTs) case; an "
                                "unlabelled case must be another patient", case_id, raw.dataset_json))
    folder = raw.folder / "imagesUnlabelled"
    stray = sorted({c.case_id for c in raw.cases("Unlabelled")} - listed)
    if stray:
        problems.append(Problem(f"{len(stray)} image(s) in imagesUnlabelled are not listed in dataset.json's "
                                f"imagesUnlabelled ({', '.join(stray[:10])}): they would be ignored", path=folder))
    return problems


def _check_case_star(args) -> list[Problem]:
    return _check_case(*args)


def verify_dataset(dataset: str | int | Path, *, num_processes: int = 1, tolerance: Tolerance | None = None
                   ) -> VerificationReport:
    """Check a raw dataset (a folder, or an id resolved under the raw root) and report every problem."""
    folder = Path(dataset) if isinstance(dataset, Path) else None
    if folder is None:
        folder = RawDataset.find(dataset).folder
    report = VerificationReport(folder)
    try:
        raw = RawDataset(folder)
    except SmoothSegError as exc:
        report.problems.append(Problem(str(exc)))
        return report
    spec = raw.spec
    tol = tolerance or Tolerance()
    if not (folder / "imagesTr").is_dir():
        report.problems.append(Problem("imagesTr folder is missing", path=folder / "imagesTr"))
    train, test = raw.training_cases, raw.test_cases
    report.n_training, report.n_test = len(train), len(test)
    if not train:
        report.problems.append(Problem(f"no training cases found (file names like <case>_0000{spec.file_ending})",
                                       path=folder / "imagesTr"))
    if len(train) != spec.num_training:
        report.problems.append(Problem(f"numTraining is {spec.num_training} but {len(train)} training cases exist",
                                       path=raw.dataset_json))
    unlabelled = raw.unlabelled_cases
    report.n_unlabelled = len(unlabelled)
    report.problems.extend(_check_unlabelled_listing(raw))
    cases = train + test
    jobs = [(c, spec, tol) for c in cases + unlabelled]
    results = map_cases(_check_case_star, jobs, num_processes, desc="verify")
    for r in results:
        report.problems.extend(r)

    if spec.clinical is not None:
        try:
            table = raw.clinical()
        except SmoothSegError as exc:
            report.problems.append(Problem(str(exc)))
        else:
            missing = [c.case_id for c in cases if c.case_id not in table.index]
            if missing:
                shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
                report.problems.append(Problem(f"clinical table has no row for {len(missing)} case(s): {shown}",
                                               path=folder / spec.clinical.file))
            known = table[table.notna().any(axis=1)].index
            without = [c.case_id for c in unlabelled if c.case_id not in known]
            if without:
                report.problems.append(Problem(
                    f"{len(without)} unlabelled case(s) have no clinical row with a feature value ("
                    f"{', '.join(without[:10])}); the knowledge term is all an unlabelled case contributes",
                    path=folder / spec.clinical.file))
    elif unlabelled:
        report.problems.append(Problem("imagesUnlabelled lists cases but no clinical table is declared; unlabelled "
                                       "cases contribute only through their clinical data", path=raw.dataset_json))
    for p in report.problems:
        logger.debug("problem: %s", p)
    return report
