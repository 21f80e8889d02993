"""DICOM in, DICOM SEG and 3D Slicer segmentations out: exact geometry, the same voxels as the label map, the
source series referenced, and clear refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dicom_builders import hd, make_ct_series, write_datasets
from inference_helpers import make_constant, make_model_pair
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import ModelOptions
from smoothseg.inference.cohort import CohortOptions, predict
from smoothseg.inference.inputs import find_input_cases
from smoothseg.paths import using_roots

FAST = ModelOptions(device=torch.device("cpu"), step_size=1.0)
INLINE = dict(num_processes_preprocessing=0, num_processes_postprocessing=0, progress=False)


def _hu(shape=(12, 40, 36), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -900, np.int16)
    hu[2:10, 8:32, 6:30] = 110
    hu[4:7, 12:18, 10:16] = 40
    return (hu + rng.normal(0, 5, shape)).astype(np.int16)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    results = tmp_path / "home" / "results"
    pair = make_model_pair(results)
    for checkpoint in pair.checkpoints("liver"):
        make_constant(checkpoint, [-5.0, 5.0])  # liver everywhere: the tumour stage sees the whole image
    return results


@pytest.fixture
def dicom_inputs(tmp_path: Path) -> tuple[Path, list]:
    """Two DICOM CT series in sub-folders (one with a tilted slice order on disk) and their datasets."""
    inputs = tmp_path / "in"
    series = {}
    for i, name in enumerate(("caseA", "caseB")):
        datasets = make_ct_series(name, _hu(seed=i), origin=(-20.0, 30.0, 100.0 + 10 * i), pixel_spacing=(0.9, 0.8),
                                  slice_step=2.5)
        write_datasets(datasets, inputs / name, order=list(range(len(datasets)))[::-1])
        series[name] = datasets
    return inputs, series


def test_dicom_series_folders_are_cases_with_exact_geometry(dicom_inputs, models: Path, tmp_path: Path) -> None:
    inputs, series = dicom_inputs
    cases = find_input_cases(inputs)
    assert [(c.case_id, c.is_dicom, c.ending) for c in cases] == [("caseA", True, ".nii.gz"),
                                                                  ("caseB", True, ".nii.gz")]
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "out", models=FAST, options=CohortOptions(**INLINE))
    assert summary.ok
    first = series["caseA"][0]
    labels, geometry = read_image(tmp_path / "out" / "caseA.nii.gz")
    assert labels.shape == (12, 40, 36) and set(np.unique(labels).tolist()) <= {0, 1, 2}
    np.testing.assert_allclose(geometry.origin, first.ImagePositionPatient, atol=1e-4)
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.9, 2.5), atol=1e-4)  # x: column spacing; z: from positions


def test_dicom_seg_holds_the_label_map_and_references_its_series(dicom_inputs, models: Path, tmp_path: Path) -> None:
    inputs, series = dicom_inputs
    with using_roots(results=models):
        assert predict(inputs, tmp_path / "nifti", models=FAST, options=CohortOptions(**INLINE)).ok
        assert predict(inputs, tmp_path / "seg", models=FAST, options=CohortOptions(output_format="dcm", **INLINE)).ok
    for name, datasets in series.items():
        labels, _ = read_image(tmp_path / "nifti" / f"{name}.nii.gz")
        seg = hd.seg.segread(tmp_path / "seg" / f"{name}.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Liver", "Liver tumor"]
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
        assert seg.SegmentSequence[1].AnatomicRegionSequence[0].CodeValue == "10200004"
        assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "smoothseg"
        # frame by frame, on the source slices ordered along the slice normal as the label map is
        order = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
        pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in order], segment_numbers=[1, 2])
        np.testing.assert_array_equal(pixels[..., 0], labels == 1)
        np.testing.assert_array_equal(pixels[..., 1], labels == 2)
        assert (labels == 1).any() and (labels == 2).any()


def test_slicer_segmentation_names_and_colours_its_segments(dicom_inputs, models: Path, tmp_path: Path) -> None:
    inputs, _ = dicom_inputs
    with using_roots(results=models):
        assert predict(inputs, tmp_path / "nifti", models=FAST, options=CohortOptions(**INLINE)).ok
        assert predict(inputs, tmp_path / "slicer", models=FAST,
                       options=CohortOptions(output_format="seg.nrrd", **INLINE)).ok
    image = sitk.ReadImage(str(tmp_path / "slicer" / "caseA.seg.nrrd"))
    assert image.GetMetaData("Segment0_Name") == "Liver" and image.GetMetaData("Segment1_Name") == "Liver tumor"
    assert image.GetMetaData("Segment1_LabelValue") == "2" and len(image.GetMetaData("Segment0_Color").split()) == 3
    slicer, _ = read_image(tmp_path / "slicer" / "caseA.seg.nrrd")
    nifti, _ = read_image(tmp_path / "nifti" / "caseA.nii.gz")
    np.testing.assert_array_equal(slicer, nifti)
    report = json.loads((tmp_path / "slicer" / "caseA_report.json").read_text())
    assert report["case_id"] == "caseA"  # the case id does not end in ".seg"


def test_dicom_seg_from_a_nifti_input_is_refused_before_any_work(models: Path, tmp_path: Path) -> None:
    write_image(_hu(), Geometry((0.8, 0.9, 2.5), (0.0, 0.0, 0.0)), tmp_path / "in" / "ct_0000.nii.gz")
    with using_roots(results=models), pytest.raises(SmoothSegError, match="not DICOM series.*ct_0000.nii.gz"):
        predict(tmp_path / "in", tmp_path / "out", models=FAST, options=CohortOptions(output_format="dcm", **INLINE))
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_folder_with_two_series_fails_naming_them(models: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for seed in (0, 1):
        write_datasets(make_ct_series("mixed", _hu(seed=seed), origin=(0.0, 0.0, 5.0 * seed), pixel_spacing=(1, 1),
                                      slice_step=2.0), inputs / "mixed", prefix=f"{seed}-")
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "out", models=FAST, options=CohortOptions(**INLINE))
    (outcome,) = summary.cases
    assert outcome.status == "failed" and "2 DICOM series" in outcome.message and "mixed" in outcome.message


def test_anonymised_sparse_headers_write_a_seg_or_fail_naming_the_empty_uids(models: Path, tmp_path: Path,
                                                                            caplog) -> None:
    """Empty patient attributes and no SeriesNumber (as research exports have them) still give a SEG that references
    its series; empty instance and series UIDs fail that case with a message naming them (a SEG cannot reference
    them) while the other case finishes, and -v (debug) logs where it failed."""
    inputs = tmp_path / "in"
    sparse = make_ct_series("", _hu(seed=0), origin=(0.0, 0.0, 0.0), pixel_spacing=(0.9, 0.8), slice_step=2.5)
    for ds in sparse:
        ds.PatientID, ds.PatientSex, ds.PatientBirthDate, ds.PatientName, ds.AccessionNumber = "", "", "", "", ""
        del ds.SeriesNumber
    write_datasets(sparse, inputs / "sparse")
    blank = make_ct_series("", _hu(seed=1), origin=(0.0, 0.0, 0.0), pixel_spacing=(0.9, 0.8), slice_step=2.5)
    for ds in blank:
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = "", "", ""
    write_datasets(blank, inputs / "blank")
    caplog.set_level("DEBUG", logger="smoothseg")
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "seg", models=FAST, options=CohortOptions(output_format="dcm", **INLINE))
    outcomes = {c.case_id: c for c in summary.cases}
    assert outcomes["sparse"].status == "ok"
    seg = hd.seg.segread(tmp_path / "seg" / "sparse.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sparse[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in sparse}
    failed = outcomes["blank"]
    assert failed.status == "failed"
    for words in ("SOPInstanceUID is empty or missing in 12 of 12 slice(s)", "SeriesInstanceUID",
                  "StudyInstanceUID", "--output-format .nii.gz or seg.nrrd", "blank"):
        assert words in failed.message
    assert not (tmp_path / "seg" / "blank.dcm").exists()
    assert any("case blank failed here" in r.getMessage() and "Traceback" in r.getMessage() for r in caplog.records)


def _irregular(folder: Path, *, offsets=None, shear_mm: float = 0.0, modality: str = "CT", duplicate: str = "",
               seed: int = 0) -> list:
    """A 12-slice CT series of the HCC-TACE-Seg layout with one irregularity, written out of slice order."""
    hu = _hu(seed=seed)
    datasets = make_ct_series(folder.name, hu, origin=(-20.0, 30.0, 100.0), pixel_spacing=(0.9, 0.8),
                              slice_step=2.5 if offsets is None else offsets)
    for k, ds in enumerate(datasets):
        ds.Modality = modality
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + shear_mm * k, z]
    if duplicate:
        extra = copy.deepcopy(datasets[5])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        extra.InstanceNumber = 99
        if duplicate == "differing":
            extra.PixelData = (np.asarray(hu[6], np.int32) + 1024).astype(np.uint16).tobytes()
        datasets = datasets + [extra]
    write_datasets(datasets, folder, order=list(range(len(datasets)))[::-1])
    return datasets


@pytest.mark.parametrize("change, words", [
    ({"offsets": [2.5 * k for k in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)]},
     ["missing slice(s): a gap of 5.00 mm between 112.50 and 117.50 mm (instances 6 and 7)", "median step being 2.50"]),
    ({"duplicate": "differing"}, ["duplicate slice position(s): two slices at 112.50 and 112.50 mm"]),
    ({"shear_mm": 2.0}, ["move 2.00 mm within the slice plane per slice", "tilted gantry"]),
    ({"modality": "MR"}, ["Modality is MR, not CT", "--allow-non-ct"]),
])
def test_irregular_series_fail_their_case_naming_the_problem_and_the_others_finish(
        change: dict, words: list[str], models: Path, tmp_path: Path) -> None:
    """Each row of the PACS-inputs table: a series with a gap, a duplicate, a shear or another modality no longer
    passes silently with a wrong geometry; it fails with the reason (summary, exit status), the clean one finishes."""
    inputs = tmp_path / "in"
    _irregular(inputs / "clean")
    _irregular(inputs / "odd", **change)
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "out", models=FAST, options=CohortOptions(**INLINE))
    outcomes = {c.case_id: c for c in summary.cases}
    assert outcomes["clean"].status == "ok" and not summary.ok
    assert outcomes["odd"].status == "failed" and str(inputs / "odd") in outcomes["odd"].message
    for text in words:
        assert text in outcomes["odd"].message
    assert not (tmp_path / "out" / "odd.nii.gz").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_failed"] == 1


def test_a_regular_series_passes_the_checks_and_mr_passes_with_allow_non_ct(models: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    datasets = _irregular(inputs / "mr", modality="MR")
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "out", models=FAST,
                          options=CohortOptions(allow_non_ct=True, **INLINE))
    assert summary.ok
    _, geometry = read_image(tmp_path / "out" / "mr.nii.gz")
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.9, 2.5), atol=1e-4)
    np.testing.assert_allclose(geometry.origin, datasets[0].ImagePositionPatient, atol=1e-4)
    with pytest.raises(SmoothSegError, match="Modality is MR"):
        read_image(inputs / "mr")


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_transfer_syntaxes_of_pacs_exports_read_exactly(syntax, tmp_path: Path) -> None:
    """RLE, JPEG-LS and JPEG 2000 (lossless) series, encoded here by pydicom, read voxel for voxel as the plain
    series, with per-slice rescale honoured (each slice its own intercept)."""
    hu = _hu(seed=3)
    datasets = make_ct_series("packed", hu, origin=(-20.0, 30.0, 100.0), pixel_spacing=(0.9, 0.8), slice_step=2.5)
    for k, ds in enumerate(datasets):  # a different stored offset per slice, undone by its own RescaleIntercept
        ds.RescaleIntercept = -1024 - 10 * k
        ds.PixelData = (np.asarray(hu[k], np.int32) + 1024 + 10 * k).astype(np.uint16).tobytes()
        ds.compress(syntax)
    write_datasets(datasets, tmp_path / "packed", order=list(range(len(datasets)))[::-1])
    array, geometry = read_image(tmp_path / "packed")
    np.testing.assert_array_equal(array, hu)
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.9, 2.5), atol=1e-4)
    np.testing.assert_allclose(geometry.origin, (-20.0, 30.0, 100.0), atol=1e-4)


def test_a_multiframe_enhanced_ct_reads_as_its_single_frame_series(tmp_path: Path) -> None:
    """A legacy-converted Enhanced CT object (one file, all frames; highdicom builds it from the series) gives the
    same voxels and geometry as the single-frame series it came from; a frame missing is refused as in a series."""
    hu = _hu(seed=4)
    datasets = make_ct_series("frames", hu, origin=(-20.0, 30.0, 100.0), pixel_spacing=(0.9, 0.8), slice_step=2.5)
    write_datasets(datasets, tmp_path / "series")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(datasets[::-1], series_instance_uid=generate_uid(),
                                                        series_number=9, sop_instance_uid=generate_uid(),
                                                        instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "ct.dcm")
    series, series_geometry = read_image(tmp_path / "series")
    frames, frames_geometry = read_image(tmp_path / "enhanced")
    np.testing.assert_array_equal(frames, series)
    assert not frames_geometry.differences(series_geometry)
    gap = hd.legacy.LegacyConvertedEnhancedCTImage(datasets[:5] + datasets[6:], series_instance_uid=generate_uid(),
                                                   series_number=9, sop_instance_uid=generate_uid(),
                                                   instance_number=1)
    (tmp_path / "gap").mkdir()
    gap.save_as(tmp_path / "gap" / "ct.dcm")
    with pytest.raises(SmoothSegError, match=r"missing slice\(s\): a gap of 5.00 mm .*frame 5 and frame 6"):
        read_image(tmp_path / "gap")


def test_an_exact_duplicate_slice_is_dropped_with_a_warning_in_the_report(models: Path, tmp_path: Path) -> None:
    """A slice present twice with the same pixels: the copy is dropped, the label map has the clean series' grid,
    and the case report says what was dropped."""
    inputs = tmp_path / "in"
    clean = _irregular(inputs / "clean")
    _irregular(inputs / "twice", duplicate="identical")
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "out", models=FAST, options=CohortOptions(**INLINE))
    assert summary.ok
    _, clean_geometry = read_image(tmp_path / "out" / "clean.nii.gz")
    labels, geometry = read_image(tmp_path / "out" / "twice.nii.gz")
    assert labels.shape[0] == len(clean) and not geometry.differences(clean_geometry)
    report = json.loads((tmp_path / "out" / "twice_report.json").read_text())
    assert any("1 duplicate DICOM slice(s)" in w for w in report["input_warnings"])
    counts = json.loads((tmp_path / "out" / "summary.json").read_text())["input_warnings"]
    assert counts == {"N duplicate DICOM slice(s) with the same position and pixels as another were dropped": 1}
    assert not json.loads((tmp_path / "out" / "clean_report.json").read_text())["input_warnings"]


def test_the_seg_of_a_deduplicated_series_references_the_slices_it_was_computed_on(models: Path,
                                                                                 tmp_path: Path) -> None:
    """Read back with highdicom: one frame per slice of the label map, each on the source instance it was
    computed on (one of the two identical slices stands for both)."""
    inputs = tmp_path / "in"
    datasets = _irregular(inputs / "twice", duplicate="identical")
    with using_roots(results=models):
        assert predict(inputs, tmp_path / "nifti", models=FAST, options=CohortOptions(**INLINE)).ok
        assert predict(inputs, tmp_path / "seg", models=FAST, options=CohortOptions(output_format="dcm", **INLINE)).ok
    labels, _ = read_image(tmp_path / "nifti" / "twice.nii.gz")
    seg = hd.seg.segread(tmp_path / "seg" / "twice.dcm")
    referenced = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert len(referenced) == len(set(referenced)) == len(datasets) - 1 == labels.shape[0]  # one of the two kept
    by_position = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    order = [d.SOPInstanceUID for d in by_position if d.SOPInstanceUID in set(referenced)]
    pixels = seg.get_pixels_by_source_instance(order, segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[..., 0], labels == 1)
    np.testing.assert_array_equal(pixels[..., 1], labels == 2)


def test_resample_irregular_fills_a_gap_on_the_clean_series_grid(models: Path, tmp_path: Path) -> None:
    """--resample-irregular with a slice missing: the label map has the geometry of the clean 13-slice series the
    gap was cut from, the kept slices are the clean ones, the missing one the mean of its neighbours; the report
    names the resampling, and a DICOM SEG of it is refused (its slices are not the source's)."""
    inputs = tmp_path / "in"
    odd = _irregular(inputs / "odd", offsets=[2.5 * k for k in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)])
    hu = _hu(seed=0)
    write_datasets(make_ct_series("ref", np.concatenate([hu[:6], hu[5:6], hu[6:]]), origin=(-20.0, 30.0, 100.0),
                                  pixel_spacing=(0.9, 0.8), slice_step=2.5), tmp_path / "reference")
    clean, clean_geometry = read_image(tmp_path / "reference")
    with pytest.raises(SmoothSegError, match="--resample-irregular resamples it"):
        read_image(inputs / "odd")
    notes: list[str] = []
    resampled, geometry = read_image(inputs / "odd", resample_irregular=True, notes=notes)
    assert not geometry.differences(clean_geometry) and resampled.shape == clean.shape == (13, 40, 36)
    assert notes and "resampled onto a regular orthogonal grid" in notes[0] and "gap of 5.00 mm" in notes[0]
    np.testing.assert_array_equal(resampled[:6], clean[:6])
    np.testing.assert_array_equal(resampled[7:], clean[7:])
    np.testing.assert_allclose(resampled[6], (odd[5].pixel_array.astype(float) + odd[6].pixel_array) / 2 - 1024,
                               atol=0.5)
    with using_roots(results=models):
        summary = predict(inputs, tmp_path / "out", models=FAST,
                          options=CohortOptions(resample_irregular=True, **INLINE))
        seg = predict(inputs, tmp_path / "seg", models=FAST,
                      options=CohortOptions(resample_irregular=True, output_format="dcm", **INLINE))
    assert summary.ok
    labels, label_geometry = read_image(tmp_path / "out" / "odd.nii.gz")
    assert labels.shape == clean.shape and not label_geometry.differences(clean_geometry)
    report = json.loads((tmp_path / "out" / "odd_report.json").read_text())
    assert any("resampled onto a regular orthogonal grid" in w for w in report["input_warnings"])
    (failed,) = seg.cases
    assert failed.status == "failed" and "not a regular stack" in failed.message and "DICOM SEG" in failed.message


def test_resample_irregular_straightens_a_sheared_stack_where_the_anatomy_is(tmp_path: Path) -> None:
    """A tilted-gantry series: slice k sits 1 mm further along y per slice and holds the same anatomy there (its
    rows shifted by k). Resampled onto the orthogonal grid it is the straight series again, voxel for voxel wherever
    a sheared slice covered it; the geometry is the straight series' own."""
    straight = _hu(shape=(12, 40, 36), seed=5)
    sheared = np.full(straight.shape, -1024, np.int16)
    for k in range(12):  # row r of slice k lies at y0 + k + r: the straight series' row r + k
        sheared[k, :40 - k] = straight[k, k:]
    write_datasets(make_ct_series("straight", straight, origin=(-20.0, 30.0, 100.0), pixel_spacing=(1.0, 0.8),
                                  slice_step=2.5), tmp_path / "straight")
    tilted = make_ct_series("tilted", sheared, origin=(-20.0, 30.0, 100.0), pixel_spacing=(1.0, 0.8), slice_step=2.5)
    for k, ds in enumerate(tilted):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 1.0, z]
    write_datasets(tilted, tmp_path / "tilted")
    expected, expected_geometry = read_image(tmp_path / "straight")
    with pytest.raises(SmoothSegError, match="move 1.00 mm within the slice plane"):
        read_image(tmp_path / "tilted")
    resampled, geometry = read_image(tmp_path / "tilted", resample_irregular=True)
    assert not geometry.differences(expected_geometry)
    for k in range(12):  # rows k..39 of the straight slice were covered by sheared rows 0..39-k
        np.testing.assert_array_equal(resampled[k, k:], expected[k, k:])


def test_a_localizer_and_an_odd_sized_image_in_the_series_folder_are_skipped_with_a_note(tmp_path: Path) -> None:
    """A scout (ImageType LOCALIZER, coronal) and an image of another size in the same series: skipped, named in the
    notes; the stack is the clean series. Two equally large stacks are refused."""
    datasets = make_ct_series("p", _hu(seed=6), origin=(-20.0, 30.0, 100.0), pixel_spacing=(0.9, 0.8), slice_step=2.5,
                              series_uid="1.2.826.0.1.3680043.10.999.1")
    write_datasets(datasets, tmp_path / "clean")
    scout = make_ct_series("p", _hu(shape=(1, 48, 40), seed=7), origin=(-20.0, 30.0, 100.0), pixel_spacing=(1, 1),
                           slice_step=1.0, orientation=(1, 0, 0, 0, 0, -1), series_uid="1.2.826.0.1.3680043.10.999.1")
    scout[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    other = make_ct_series("p", _hu(shape=(1, 20, 20), seed=8), origin=(-20.0, 30.0, 200.0), pixel_spacing=(0.9, 0.8),
                           slice_step=2.5, series_uid="1.2.826.0.1.3680043.10.999.1")
    write_datasets(datasets, tmp_path / "mixed")
    write_datasets(scout, tmp_path / "mixed", prefix="scout-")
    write_datasets(other, tmp_path / "mixed", prefix="other-")
    expected, expected_geometry = read_image(tmp_path / "clean")
    notes: list[str] = []
    array, geometry = read_image(tmp_path / "mixed", notes=notes)
    np.testing.assert_array_equal(array, expected)
    assert not geometry.differences(expected_geometry)
    assert len(notes) == 1 and "2 DICOM image(s) that do not belong to the CT stack were skipped" in notes[0]
    assert "scout-001.dcm" in notes[0] and "other-001.dcm" in notes[0]
    twins = make_ct_series("p", _hu(shape=(12, 20, 20), seed=9), origin=(-20.0, 30.0, 100.0), pixel_spacing=(0.9, 0.8),
                           slice_step=2.5, series_uid="1.2.826.0.1.3680043.10.999.1")
    write_datasets(datasets, tmp_path / "two")
    write_datasets(twins, tmp_path / "two", prefix="twin-")
    with pytest.raises(SmoothSegError, match="no single consistent CT stack"):
        read_image(tmp_path / "two")
