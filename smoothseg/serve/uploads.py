"""What ``smoothseg_serve`` accepts as an upload, and how a job's input is laid out on disk.

An upload is one image file (NIfTI, NRRD, MetaImage ``.mha``) or a zip of one DICOM series. The uploaded file's
name only chooses the kind (by its ending); on disk every job uses fixed names under ``<data>/jobs/<id>/``, so no
uploaded name ever becomes a path. A zip is checked before it is accepted (every member a relative path inside the
job folder: no ``..``, no absolute path, no link; bounded member count and unpacked size) and unpacked by the worker;
an NRRD or MetaImage header must not point at a separate data file.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from smoothseg.dataset.io import is_dicom_folder
from smoothseg.errors import SmoothSegError

__all__ = ["UPLOAD_KINDS", "UploadError", "check_header", "check_zip", "input_kind", "job_input", "unpack_dicom_zip"]

#: Upload ending (lower case) -> the kind of job input (stored as ``input/image<ending>``, a zip as
#: ``input/upload.zip``).
UPLOAD_KINDS = {".nii.gz": ".nii.gz", ".nii": ".nii", ".nrrd": ".nrrd", ".mha": ".mha", ".zip": "dicom-zip"}
MAX_ZIP_MEMBERS = 20000


class UploadError(SmoothSegError):
    """An upload refused before it is queued (the HTTP answer is 400 with this message)."""


def input_kind(filename: str) -> str:
    """The kind of an upload from its file name's ending (case-insensitive)."""
    lower = filename.lower()
    for ending, kind in UPLOAD_KINDS.items():
        if lower.endswith(ending):
            return kind
    raise UploadError(f"{filename!r}: not an accepted upload; send a NIfTI (.nii.gz, .nii), NRRD (.nrrd) or MetaImage "
                      "(.mha) file, or a .zip of one DICOM series")


def stored_name(kind: str) -> str:
    """The fixed file name an upload of ``kind`` is stored under in the job's ``input`` folder."""
    return "upload.zip" if kind == "dicom-zip" else f"image{kind}"


HEADER_BYTES = 65536


def check_header(path: Path, kind: str) -> None:
    """Refuse an NRRD or MetaImage upload whose header points at voxel data in another file (``data file:`` in NRRD,
    ``ElementDataFile`` other than ``LOCAL`` in MetaImage): ITK would read that file, which could be any file on the
    server. NIfTI files hold their voxels themselves."""
    if kind not in (".nrrd", ".mha"):
        return
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES).decode("latin-1")
    if kind == ".nrrd":
        header = head.split("\n\n", 1)[0]
        for line in header.splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("data file", "datafile"):
                raise UploadError(f"the NRRD header names a separate data file ({line.strip()[:80]!r}); upload one "
                                  "self-contained .nrrd (attached data)")
        return
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "elementdatafile":
            if value.strip() != "LOCAL":
                raise UploadError(f"the MetaImage header names a separate data file ({value.strip()[:80]!r}); "
                                  "upload one self-contained .mha (ElementDataFile = LOCAL)")
            return
    raise UploadError("the .mha upload has no ElementDataFile line in its header; not a MetaImage file")


def check_zip(path: Path, max_unpacked_bytes: int) -> None:
    """Refuse a zip that is not one, or whose members could leave the folder it is unpacked into (zip-slip), are
    links, are too many, or unpack to more than ``max_unpacked_bytes``."""
    if not zipfile.is_zipfile(path):
        raise UploadError("the upload ends in .zip but is not a zip archive")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"the zip archive cannot be read ({exc})") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise UploadError(f"the zip holds {len(members)} entries (at most {MAX_ZIP_MEMBERS})")
        total = 0
        for member in members:
            name = member.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if (name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0])
                    or any(ord(c) < 32 for c in name)):
                raise UploadError(f"the zip entry {name!r} points outside the folder it would be unpacked into; "
                                  "refused")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise UploadError(f"the zip entry {name!r} is a symbolic link; refused")
            total += member.file_size
        if total > max_unpacked_bytes:
            raise UploadError(f"the zip unpacks to {total / 1e9:.2f} GB (at most {max_unpacked_bytes / 1e9:.2f} GB)")


def unpack_dicom_zip(path: Path, target: Path, max_unpacked_bytes: int) -> Path:
    """Unpack a checked zip into ``target`` and return the one folder in it that holds a DICOM series."""
    check_zip(path, max_unpacked_bytes)
    if target.exists():
        shutil.rmtree(target)  # a re-queued job unpacks again
    target.mkdir(parents=True)
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            destination = (target / member.filename).resolve()
            if not destination.is_relative_to(target.resolve()):  # checked above; kept as a second lock
                raise UploadError(f"the zip entry {member.filename!r} points outside the job folder; refused")
            archive.extract(member, target)
    folders = sorted({p.parent for p in target.rglob("*") if p.is_file()})
    series = [folder for folder in folders if is_dicom_folder(folder)]
    if not series:
        raise UploadError("the zip holds no DICOM series (no folder of DICOM files)")
    if len(series) > 1:
        names = ", ".join(str(folder.relative_to(target)) for folder in series[:5])
        raise UploadError(f"the zip holds {len(series)} folders of DICOM files ({names}); upload one series per job")
    return series[0]


def job_input(folder: Path, kind: str) -> Path:
    """The stored upload of a job (``folder`` = the job folder)."""
    return folder / "input" / stored_name(kind)
