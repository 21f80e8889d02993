"""smoothseg_verify_dataset: a clean dataset passes; a broken one reports every problem at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from cli_helpers import run_cli

from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.dataset.verify import verify_dataset


def test_demo_dataset_is_clean(demo_dataset: Path) -> None:
    report = verify_dataset(demo_dataset, num_processes=2)
    assert report.ok, report.summary()
    assert (report.n_training, report.n_test) == (4, 2)


def test_broken_dataset_reports_all_problems(demo_dataset: Path) -> None:
    tr, ts = demo_dataset / "imagesTr", demo_dataset / "labelsTr"
    # 1. missing label
    (ts / "SynLiver_000.nii.gz").unlink()
    # 2. geometry mismatch: label with other spacing and origin
    label, geom = read_image(ts / "SynLiver_001.nii.gz")
    write_image(label, Geometry((9.0, 9.0, 9.0), (1, 2, 3), geom.direction), ts / "SynLiver_001.nii.gz")
    # 3. undeclared label value, and a direction mismatch
    label, geom = read_image(ts / "SynLiver_002.nii.gz")
    label[0, 0, 0] = 7
    write_image(label, Geometry(geom.spacing, geom.origin, np.diag([1, -1, 1]).ravel()), ts / "SynLiver_002.nii.gz")
    # 4. a 2D image
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(tr / "SynLiver_003_0000.nii.gz"))
    # 5. an image without label that numTraining does not count, holding NaN
    bad = np.zeros((4, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    write_image(bad, geom, tr / "Extra_000_0000.nii.gz")
    # 6. missing image for a test case
    (demo_dataset / "imagesTs" / "SynLiver_005_0000.nii.gz").unlink()
    # 7. clinical row missing
    clinical = demo_dataset / "clinical.csv"
    clinical.write_text("\n".join(ln for ln in clinical.read_text().splitlines() if "SynLiver_004" not in ln) + "\n")

    report = verify_dataset(demo_dataset)
    text = report.summary()
    expected = [
        "[SynLiver_000]: label is missing",
        "SynLiver_001.nii.gz: geometry differs from SynLiver_001_0000.nii.gz: spacing",
        "label values [7] are not declared",
        "SynLiver_002.nii.gz: geometry differs from SynLiver_002_0000.nii.gz: direction",
        "SynLiver_003_0000.nii.gz: expected a 3D image, found a 2D image",
        "Extra_000_0000.nii.gz: 1 voxel(s) are NaN or Inf",
        "[Extra_000]: label is missing",
        "[SynLiver_005]: image for channel 0 (CT) is missing",
        "numTraining is 4 but 5 training cases exist",
        "clinical table has no row for 2 case(s): Extra_000, SynLiver_004",
    ]
    for words in expected:
        assert words in text, f"missing {words!r} in\n{text}"
    assert "origin" in text.split("SynLiver_001.nii.gz: geometry differs")[1].splitlines()[0]
    assert not report.ok


def test_broken_dataset_json_is_one_clear_problem(demo_dataset: Path) -> None:
    data = json.loads((demo_dataset / "dataset.json").read_text())
    data["labels"]["liver"] = "one"
    (demo_dataset / "dataset.json").write_text(json.dumps(data))
    report = verify_dataset(demo_dataset)
    assert len(report.problems) == 1 and "'labels'" in str(report.problems[0])


def test_cli_exit_codes(demo_dataset: Path, data_home: Path) -> None:
    ok = run_cli("verify_dataset", "-d", "900", home=data_home)
    assert ok.returncode == 0, ok.stderr
    assert "0 problem(s)" in ok.stdout and "dataset is clean" in ok.stdout
    assert f"raw          root: {data_home / 'raw'}" in ok.stderr  # every command logs its roots
    (demo_dataset / "labelsTr" / "SynLiver_000.nii.gz").unlink()
    bad = run_cli("verify_dataset", "-d", "Dataset900_SyntheticLiver", home=data_home)
    assert bad.returncode == 1 and "label is missing" in bad.stdout
    missing = run_cli("verify_dataset", "-d", "42", home=data_home)
    assert missing.returncode == 2
    assert "error: no dataset '42'" in missing.stderr and "Dataset900_SyntheticLiver" in missing.stderr
    assert "Traceback" not in missing.stderr
