"""Builders of tiny, real DICOM files for the converter tests: CT series (optionally two phases stacked in one
series), DICOM SEG objects written with highdicom, and the expected label maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def make_ct_series(patient_id: str, hu: np.ndarray, *, origin: Sequence[float], pixel_spacing: Sequence[float],
                   slice_step: float | Sequence[float], orientation: Sequence[float] = AXIAL,
                   study_uid: str | None = None, series_uid: str | None = None, acquisition_number: int = 1,
                   frame_of_reference_uid: str | None = None, series_number: int = 2,
                   first_instance: int = 1) -> list[Dataset]:
    """One CT dataset per ``hu[k]``, at ``origin + offset_k * normal``.

    ``slice_step`` is either the signed distance between consecutive slices or the list of offsets themselves.
    Pixels are stored unsigned with RescaleIntercept -1024, like most scanners.
    """
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    offsets = (np.arange(hu.shape[0]) * slice_step if np.isscalar(slice_step)
               else np.asarray(slice_step, float))
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    out = []
    for k in range(hu.shape[0]):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.PatientName = f"Test^{patient_id}"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20200101", "120000", "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = series_number
        ds.InstanceNumber = first_instance + k
        ds.AcquisitionNumber = acquisition_number
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "smoothseg-tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + offsets[k] * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = abs(float(offsets[1] - offsets[0])) if len(offsets) > 1 else 1.0
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (np.asarray(hu[k], np.int32) + 1024).astype(np.uint16).tobytes()
        out.append(ds)
    return out


def write_datasets(datasets: Sequence[Dataset], folder: Path, *, prefix: str = "1-", order: Sequence[int] | None = None
                   ) -> list[Path]:
    """Write datasets as ``<prefix>NNN.dcm`` in ``order`` (file names do not follow slice order); returns paths
    in the order of ``datasets``."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(order) if order is not None else list(range(len(datasets)))
    paths: list[Path | None] = [None] * len(datasets)
    for n, i in enumerate(order):
        path = folder / f"{prefix}{n + 1:03d}.dcm"
        datasets[i].save_as(path, enforce_file_format=True)
        paths[i] = path
    return paths  # type: ignore[return-value]


def reread(paths: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


_PROPERTIES = {
    "Liver": (codes.SCT.Organ, codes.SCT.Liver),
    "Mass": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    "Portal vein": (codes.SCT.AnatomicalStructure, codes.SCT.PortalVein),
    "Abdominal aorta": (codes.SCT.AnatomicalStructure, codes.SCT.AbdominalAorta),
    "Necrosis": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Necrosis),
}


def make_seg(source: Sequence[Dataset], masks: dict[str, np.ndarray], patient_id: str) -> Dataset:
    """A BINARY DICOM SEG over ``source`` (one frame per source slice, empty frames omitted) with one segment per
    ``masks`` entry, numbered in the dict's order; ``masks[name]`` is ``(z, y, x)`` in ``source`` order."""
    names = list(masks)
    pixel_array = np.stack([masks[n] for n in names], axis=-1).astype(bool)
    descriptions = []
    for number, name in enumerate(names, start=1):
        category, prop = _PROPERTIES.get(name, (codes.SCT.AnatomicalStructure, codes.SCT.Organ))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
    return hd.seg.Segmentation(
        source_images=list(source), pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=300, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="smoothseg-tests", manufacturer_model_name="builder", software_versions="1",
        device_serial_number="1", content_label="SEG")


def strip_source_references(path: Path, *, keep_series_reference: bool = True) -> None:
    """Rewrite a SEG file without per-frame source references (and optionally without ReferencedSeriesSequence),
    so frames can only be placed by their plane positions."""
    ds = pydicom.dcmread(path)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in frame:
            del frame.DerivationImageSequence
    if not keep_series_reference and "ReferencedSeriesSequence" in ds:
        del ds.ReferencedSeriesSequence
    ds.save_as(path)


def paint_expected(masks: dict[str, np.ndarray], keep_necrosis: bool = False) -> np.ndarray:
    """The label map the converter should produce: liver 1 < aorta 4 < portal vein 3 < tumour 2 (< necrosis)."""
    shape = next(iter(masks.values())).shape
    out = np.zeros(shape, np.uint8)
    order = [("Liver", 1), ("Abdominal aorta", 4), ("Portal vein", 3), ("Mass", 2),
             ("Necrosis", 5 if keep_necrosis else 2)]
    for name, value in order:
        if name in masks:
            out[masks[name].astype(bool)] = value
    return out


def box(shape: tuple[int, int, int], z: slice, y: slice, x: slice) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[z, y, x] = True
    return m


def add_series_references(path: Path, datasets: Sequence[Dataset]) -> None:
    """Rewrite a SEG file so its ReferencedSeriesSequence also lists ``datasets`` (as some exporters list every
    instance of the series, both phases included)."""
    ds = pydicom.dcmread(path)
    refs = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    for src in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        refs.append(item)
    ds.save_as(path)
