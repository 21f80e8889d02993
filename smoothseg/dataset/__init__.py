"""Raw dataset model: ``dataset.json`` schema, case discovery, image I/O, the clinical table, verification."""

from smoothseg.dataset.cases import CaseFiles, image_path, label_path, list_cases
from smoothseg.dataset.dataset_json import ClinicalSpec, DatasetSpec, TaskRegions
from smoothseg.dataset.io import Geometry, read_header, read_image, write_image
from smoothseg.dataset.raw_dataset import RawDataset

__all__ = [
    "CaseFiles", "ClinicalSpec", "DatasetSpec", "Geometry", "RawDataset", "TaskRegions",
    "image_path", "label_path", "list_cases", "read_header", "read_image", "write_image",
]
