"""Convert the TCIA HCC-TACE-Seg collection (CT + DICOM SEG + clinical spreadsheet) to a smoothseg raw dataset.

Input: the folder the NBIA Data Retriever downloaded (any layout: patients are told apart by their DICOM
PatientID, e.g. ``HCC_001``) and, optionally, the clinical spreadsheet. Output:
``<raw root>/Dataset007_HCCTACESeg/{imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json,
clinical.csv, conversion_report.json, conversion.log}``.

Per patient:

1. find its DICOM SEG (by Modality/SOP class, anywhere in its files); none: the patient is skipped;
2. take exactly the CT instances the SEG references (by SOPInstanceUID), which resolves the ~1 in 5 series that
   hold two contrast phases at the same positions (told apart by AcquisitionNumber); ``complete_phase`` extends a
   SEG that references part of a phase to the whole phase;
3. stack them into an int16 HU volume sorted along the slice normal (:mod:`dataset_conversion.dicom_ct`);
4. paint the SEG's segments on that grid by label (:mod:`dataset_conversion.dicom_seg`): liver 1, tumour 2
   (``Mass``, plus ``Necrosis`` unless ``keep_necrosis``), portal vein 3, aorta 4; tumour wins over vessels,
   vessels over liver;
5. write image and label with identical geometry.

A patient that fails (no SEG, corrupted file, irregular slices...) is skipped and reported; the others go on.
The clinical spreadsheet becomes ``clinical.csv`` (:mod:`dataset_conversion.hcc_tace_clinical`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from dataset_conversion.dicom_ct import (
    DicomFile,
    DicomIndex,
    build_ct_volume,
    group_phases,
    index_dicom_tree,
    require_dicom_libraries,
    stack_slices,
)
from dataset_conversion.dicom_seg import (
    build_label_map,
    frame_referenced_uids,
    label_values,
    read_segmentation,
    referenced_instance_uids,
)
from dataset_conversion.hcc_tace_clinical import CASE_ID_COLUMN, build_clinical, sanitise_case_id, write_clinical_csv
from dataset_conversion.report import (
    CaseOutcome,
    ConversionError,
    ConversionReport,
    collect_log,
    prepare_output_folder,
)
from smoothseg.dataset.cases import image_path, label_path
from smoothseg.dataset.dataset_json import ClinicalSpec, DatasetSpec, TaskRegions
from smoothseg.dataset.io import write_image
from smoothseg.errors import SmoothSegError
from smoothseg.paths import dataset_folder_name, raw_root

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger("smoothseg.conversion.hcc_tace_seg")

DATASET_ID = 7
DATASET_NAME = "HCCTACESeg"
FILE_ENDING = ".nii.gz"
CLINICAL_FILE = "clinical.csv"
DESCRIPTION = ("HCC-TACE-Seg (TCIA): contrast CT of hepatocellular carcinoma before TACE, with liver, tumour, "
               "portal vein and aorta segmentations and clinical data; converted by smoothseg")
REFERENCE = "https://www.cancerimagingarchive.net/collection/hcc-tace-seg/"


@dataclass
class ConversionResult:
    """Where the dataset was written and what happened to each patient."""

    folder: Path
    report: ConversionReport
    clinical_error: str | None = None


def _unreadable_hint(unreadable: Sequence[tuple[Path, str]]) -> str:
    if not unreadable:
        return ""
    path, why = unreadable[0]
    return f"; {len(unreadable)} of the patient's files could not be read, e.g. {path}: {why}"


def _choose_seg(segs: list[DicomFile], outcome: CaseOutcome) -> DicomFile:
    segs = sorted(segs, key=lambda f: str(f.path))
    if len(segs) > 1:
        outcome.warn(f"{len(segs)} SEG objects; using {segs[0].path}, ignoring "
                     f"{', '.join(str(s.path) for s in segs[1:])}")
    return segs[0]


def _slices_without_references(seg: Dataset, cts: list[DicomFile], seg_path: Path,
                               outcome: CaseOutcome) -> list[DicomFile]:
    frame_of_reference = str(seg.get("FrameOfReferenceUID", "") or "")
    phases = {key: files for key, files in group_phases(cts).items()
              if not frame_of_reference or files[0].frame_of_reference_uid == frame_of_reference}
    if len(phases) != 1:
        raise ConversionError(f"{seg_path}: the SEG references no CT instances, and {len(phases)} CT phases "
                              "(series, acquisition number) share its frame of reference; cannot tell which it "
                              "segments")
    (series, acquisition), files = next(iter(phases.items()))
    outcome.warn(f"the SEG references no CT instances; using the only CT phase in its frame of reference "
                 f"(series {series}, acquisition {acquisition})")
    return files


def select_ct_slices(seg: Dataset, files: list[DicomFile], seg_path: Path, outcome: CaseOutcome, *,
                     complete_phase: bool = False, unreadable: Sequence[tuple[Path, str]] = ()) -> list[DicomFile]:
    """The CT instances the SEG references, found by SOPInstanceUID among the patient's files."""
    cts = [f for f in files if f.is_ct]
    by_uid = {f.sop_instance_uid: f for f in cts}
    uids = referenced_instance_uids(seg)
    if not uids:
        return _slices_without_references(seg, cts, seg_path, outcome)
    frame_uids = frame_referenced_uids(seg)
    missing = [u for u in uids if u not in by_uid]
    missing_frames = [u for u in frame_uids if u not in by_uid]
    if missing_frames or len(missing) == len(uids):
        raise ConversionError(f"{seg_path}: {len(missing)} of the {len(uids)} CT instances the SEG references"
                              f"{' (some segmented)' if missing_frames else ''} are not among the patient's CT files "
                              f"(first: {missing[0]}){_unreadable_hint(unreadable)}")
    if missing:
        outcome.warn(f"{len(missing)} of the {len(uids)} CT instances the SEG lists are not in the download (none "
                     f"of them segmented); building the volume from the other {len(uids) - len(missing)}")
    chosen = [by_uid[u] for u in uids if u in by_uid]
    keys = {f.phase_key for f in chosen}
    frame_keys = {by_uid[u].phase_key for u in frame_uids}
    if len(keys) > 1 and frame_keys and frame_keys < keys:
        outcome.warn(f"the SEG references {len(keys)} CT phases (series, acquisition number); using the "
                     f"{len(frame_keys)} its frames were derived from")
        chosen = [f for f in chosen if f.phase_key in frame_keys]
        keys = frame_keys
    outcome.details["referenced_slices"] = len(chosen)
    outcome.details["phases_referenced"] = [{"series": s, "acquisition_number": a} for s, a in sorted(keys, key=str)]
    if len(keys) == 1:
        phase = group_phases(cts)[next(iter(keys))]
        if len(phase) > len(chosen):
            outcome.details["phase_slices"] = len(phase)
            if not complete_phase:
                logger.info("[%s] the SEG references %d of the %d slices of its phase; converting those only",
                            outcome.case_id, len(chosen), len(phase))
            else:
                try:
                    stack_slices(phase)
                except ConversionError as exc:
                    outcome.warn(f"cannot complete the phase ({exc}); using the referenced slices only")
                else:
                    outcome.details["completed_phase_slices"] = len(phase)
                    return phase
    return chosen


def convert_patient(files: list[DicomFile], case_id: str, folder: Path, outcome: CaseOutcome, *,
                    keep_necrosis: bool = False, complete_phase: bool = False,
                    unreadable: Sequence[tuple[Path, str]] = ()) -> None:
    """Convert one patient's files into ``imagesTr``/``labelsTr`` of ``folder``; raises on any problem."""
    segs = [f for f in files if f.is_segmentation]
    if not segs:
        modalities = ", ".join(sorted({f.modality or "?" for f in files}))
        raise ConversionError(f"no DICOM SEG among the patient's {len(files)} DICOM files (modalities: {modalities})"
                              f"{_unreadable_hint(unreadable)}")
    for path, why in unreadable:
        outcome.warn(f"unreadable file ignored: {path}: {why}")
    seg_file = _choose_seg(segs, outcome)
    seg, note = read_segmentation(seg_file.path)
    if note:
        outcome.warn(note)
    slices = select_ct_slices(seg, files, seg_file.path, outcome, complete_phase=complete_phase,
                              unreadable=unreadable)
    volume = build_ct_volume(slices)
    labels, facts = build_label_map(seg, volume, seg_file.path, keep_necrosis=keep_necrosis)
    if not facts["voxels"].get("liver"):
        outcome.warn("the label map has no liver voxels")
    image_file = image_path(folder, "Tr", case_id, FILE_ENDING)
    label_file = label_path(folder, "Tr", case_id, FILE_ENDING)
    try:
        write_image(volume.hu, volume.geometry, image_file)
        write_image(labels, volume.geometry, label_file)
    except BaseException:
        for p in (image_file, label_file):
            p.unlink(missing_ok=True)
        raise
    outcome.details.update({
        "seg": str(seg_file.path),
        "shape_zyx": list(volume.shape),
        "geometry": volume.geometry.to_dict(),
        **facts,
    })


def _patient_source(files: list[DicomFile]) -> str:
    try:
        return os.path.commonpath([str(f.path.parent) for f in files])
    except ValueError:
        return str(files[0].path.parent)


def _convert_all(index: DicomIndex, folder: Path, report: ConversionReport, *, keep_necrosis: bool,
                 complete_phase: bool, progress: bool) -> None:
    patients = index.by_patient()
    seen: dict[str, str] = {}
    for patient_id, files in tqdm(patients.items(), desc="convert", unit="patient", disable=not progress):
        case_id = sanitise_case_id(patient_id) if patient_id else ""
        source = _patient_source(files)
        if not case_id:
            report.skip("<no PatientID>", source, f"{len(files)} DICOM file(s) have no PatientID")
            continue
        if case_id in seen:
            report.skip(case_id, source, f"PatientID '{patient_id}' gives the same case id as '{seen[case_id]}'")
            continue
        seen[case_id] = patient_id
        with report.case(case_id, source) as outcome:
            if case_id != patient_id:
                outcome.warn(f"PatientID '{patient_id}' written as case id '{case_id}'")
            convert_patient(files, case_id, folder, outcome, keep_necrosis=keep_necrosis,
                            complete_phase=complete_phase, unreadable=index.unreadable_for(patient_id))
    orphans = [(p, why) for p, why in index.unreadable
               if not any(pid in p.relative_to(index.root).parts[:-1] for pid in patients)]
    for path, why in orphans:
        report.warn(f"unreadable file of no known patient: {path}: {why}")


def _write_clinical(xlsx: Path, folder: Path, report: ConversionReport) -> ClinicalSpec:
    clinical = build_clinical(xlsx, report.converted_ids)
    write_clinical_csv(clinical, folder / CLINICAL_FILE)
    report.warnings.extend(clinical.warnings)
    report.facts["clinical"] = {"source": str(xlsx), "rows": int(len(clinical.table)),
                                "features": clinical.features, "categorical": clinical.categorical}
    return ClinicalSpec(CLINICAL_FILE, CASE_ID_COLUMN, tuple(clinical.features), tuple(clinical.categorical))


def dataset_spec(num_training: int, clinical: ClinicalSpec | None, *, keep_necrosis: bool = False) -> DatasetSpec:
    """The dataset.json of the converted collection."""
    labels = label_values(keep_necrosis)
    tumour = (labels["tumor"],) + ((labels["necrosis"],) if keep_necrosis else ())
    liver = tuple(sorted({labels["liver"], labels["portal_vein"], *tumour}))
    return DatasetSpec(
        channel_names={"0": "CT"}, labels=labels, num_training=num_training, file_ending=FILE_ENDING,
        task_regions=TaskRegions(liver, tuple(sorted(tumour))), clinical=clinical, name=DATASET_NAME,
        extra={"description": DESCRIPTION, "reference": REFERENCE},
    )


def convert_hcc_tace_seg(input_dir: str | Path, clinical_xlsx: str | Path | None = None, *,
                         dataset_id: int = DATASET_ID, output_root: str | Path | None = None,
                         overwrite: bool = False, keep_necrosis: bool = False, complete_phase: bool = False,
                         progress: bool = True) -> ConversionResult:
    """Convert a TCIA HCC-TACE-Seg download to ``<output_root>/DatasetXXX_HCCTACESeg`` and report every patient.

    ``output_root`` defaults to the raw root (:func:`smoothseg.paths.raw_root`). Raises :class:`SmoothSegError`
    for problems with the inputs as a whole (missing folder, no DICOM, no patient converted); a patient's own
    problem only skips that patient. A clinical spreadsheet that cannot be used is reported in
    ``ConversionResult.clinical_error`` and the dataset is written without the ``clinical`` key.
    """
    require_dicom_libraries()
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise SmoothSegError(f"{input_dir}: input folder does not exist")
    xlsx = Path(clinical_xlsx) if clinical_xlsx is not None else None
    if xlsx is not None and not xlsx.is_file():
        raise SmoothSegError(f"{xlsx}: clinical spreadsheet does not exist")
    folder = Path(output_root if output_root is not None else raw_root()) / dataset_folder_name(dataset_id,
                                                                                                DATASET_NAME)
    prepare_output_folder(folder, overwrite)
    report = ConversionReport(folder, input_dir)
    result = ConversionResult(folder, report)
    with collect_log() as log_lines:
        logger.info("converting %s into %s", input_dir, folder)
        index = index_dicom_tree(input_dir, progress=progress)
        if not index.files:
            report.save(log_lines)
            raise SmoothSegError(f"{input_dir}: no DICOM files found")
        _convert_all(index, folder, report, keep_necrosis=keep_necrosis, complete_phase=complete_phase,
                     progress=progress)
        if not report.converted:
            report.save(log_lines)
            raise SmoothSegError(f"no patient could be converted; reasons in {folder / 'conversion_report.json'}\n"
                                 + report.summary())
        clinical = None
        if xlsx is not None:
            try:
                clinical = _write_clinical(xlsx, folder, report)
            except SmoothSegError as exc:
                result.clinical_error = str(exc)
                report.warn(f"clinical table not written: {exc}")
                report.facts["clinical"] = {"source": str(xlsx), "error": str(exc)}
        else:
            report.warn("no clinical spreadsheet given: dataset.json has no 'clinical' key (TLVR term off)")
        spec = dataset_spec(len(report.converted), clinical, keep_necrosis=keep_necrosis)
        spec.save(folder / "dataset.json")
        report.facts["labels"] = spec.labels
        logger.info("%d patient(s) converted, %d skipped", len(report.converted), len(report.skipped))
    report.save(log_lines)
    return result
