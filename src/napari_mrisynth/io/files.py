"""Load and save volumes in every format the package reads: DICOM, NIfTI, MetaImage, NRRD."""

from __future__ import annotations

from pathlib import Path

from napari_mrisynth.errors import GeometryError, VolumeFileError
from napari_mrisynth.io.dicom import is_dicom_file, load_dicom
from napari_mrisynth.volume import (
    Volume,
    volume_from_nifti,
    volume_from_sitk,
    volume_to_nifti,
    volume_to_sitk,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
#: Every single-file volume format :func:`load_volume` reads and :func:`save_volume` writes
#: (lower case; ``.nii.gz`` before ``.nii``).
VOLUME_SUFFIXES = (".nii.gz", ".nii", *ITK_SUFFIXES)
#: Named DICOM: a broken one gets the DICOM reader's specific error, not "unknown format".
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
FORMATS = "a DICOM folder or file, .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr"
#: Name endings (before the suffix) of label maps kept beside their volume (BIDS-like).
MASK_SUFFIXES = ("_labels", "_dseg", "_mask")


def volume_suffix(path: str | Path) -> str:
    """The volume or DICOM suffix ``path`` ends with, in lower case (``""`` for none).

    >>> volume_suffix("sub-01_T1w.NII.GZ")
    '.nii.gz'
    """
    name = Path(path).name.lower()
    return next((s for s in (*VOLUME_SUFFIXES, *DICOM_SUFFIXES) if name.endswith(s)), "")


def is_volume_file(path: str | Path) -> bool:
    """True for a name ending in a single-file volume format (not DICOM)."""
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES)


def is_label_map(path: str | Path) -> bool:
    """True for a file named as a label map of the volume beside it (``x_labels.nii.gz``)."""
    return volume_stem(path).endswith(MASK_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """The file name without its volume or DICOM suffix (the whole name when it has none).

    >>> volume_stem("/data/sub-01_T1w.nii.gz")
    'sub-01_T1w'
    """
    name = Path(path).name
    return name[: len(name) - len(volume_suffix(name))] or name


def _suffix(path: Path) -> str:
    suffix = volume_suffix(path)
    return suffix if suffix in VOLUME_SUFFIXES else ""


def _itk_reason(exc: RuntimeError) -> str:
    """ITK's own sentence from its exception text, without the misleading errno line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line.split("): ", 1)[-1] for line in lines if "ITK ERROR" in line]
    reason = errors[-1] if errors else (lines[-1] if lines else "unreadable")
    # ITK appends strerror(errno) ("No such file or directory") even for a short file
    return f"{reason} (the file exists: truncated or damaged?)"


def load_volume(
    path: str | Path,
    *,
    series: str | int | None = None,
    lazy: bool = False,
    resample: bool = False,
) -> Volume:
    """Load a volume from a DICOM folder or file, NIfTI, MetaImage or NRRD.

    Parameters
    ----------
    path : path
        A folder of DICOM files (searched recursively), one DICOM file, or an image file
        ending in .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr.
    series : str or int, optional
        DICOM only: series key, SeriesInstanceUID or SeriesNumber.
    lazy : bool
        DICOM only: voxels as a dask array with one chunk per slice.
    resample : bool
        DICOM only: resample an irregular stack onto a regular grid.

    Returns
    -------
    Volume
        ``metadata['source']`` names the path read.

    Raises
    ------
    VolumeFileError
        The path does not exist, has an unknown format or cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeFileError(path, "no such file or directory")
    if path.is_dir():
        return load_dicom(path, series=series, lazy=lazy, resample=resample)
    suffix = _suffix(path)
    metadata = {"source": str(path), "name": volume_stem(path), "description": volume_stem(path)}
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        try:
            image = nib.load(str(path))
            return volume_from_nifti(image, metadata)
        except GeometryError as exc:
            raise VolumeFileError(path, str(exc)) from exc
        except Exception as exc:  # nibabel raises many types for a damaged file
            raise VolumeFileError(path, f"unreadable NIfTI: {exc}") from exc
    if suffix in ITK_SUFFIXES:
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise VolumeFileError(path, f"unreadable {suffix} image: {_itk_reason(exc)}") from exc
        try:
            return volume_from_sitk(image, metadata)
        except GeometryError as exc:
            raise VolumeFileError(path, str(exc)) from exc
    if is_dicom_file(path) or path.suffix.lower() in DICOM_SUFFIXES:
        return load_dicom(path, series=series, lazy=lazy, resample=resample)
    raise VolumeFileError(path, f"unknown format: expected {FORMATS}")


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd) or NRRD (.nrrd, .nhdr).

    Parent folders are created. NIfTI carries the RAS affine in sform and qform.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    VolumeFileError
        Unknown suffix, or the file cannot be written.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not suffix:
        raise VolumeFileError(
            path, "unknown output format: use .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            nib.save(volume_to_nifti(volume), str(path))
        else:
            import SimpleITK as sitk

            sitk.WriteImage(volume_to_sitk(volume), str(path), True)
    except (OSError, RuntimeError) as exc:
        raise VolumeFileError(path, f"cannot write: {exc}") from exc
    return path


__all__ = ["is_dicom_file", "load_volume", "save_volume"]
