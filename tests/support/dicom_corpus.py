"""A DICOM test corpus built from the real MNI152 2009 T1 template, and independent references.

Every series is resampled from the template (shipped by nilearn) onto a small grid with
SimpleITK, written with :func:`napari_mrisynth.io.dicom_write.write_dicom_series`, and kept
beside its ground truth: the exact voxels (after rescale) and the exact geometry written into
the headers. The references used to judge the reader are computed here without the reader:

* the ground-truth ``Volume`` written,
* dcm2niix (``dcm2niix -z n``) read with nibabel,
* SimpleITK's ``ImageSeriesReader`` with ``GDCMImageIO``,
* pydicom's own ``pixel_array`` and the IPP/IOP in the headers.

Images are compared in nibabel's closest canonical (RAS) orientation, so a reader may stack
slices in either direction and still match, as long as every voxel lands at the same point.

Series (8 slices of 48 x 56, 3 x 3.5 x 4 mm, so rows/columns or PixelSpacing swaps show):
axial, double oblique (15 and 10 degrees), sagittal (stacked against cross(row, col)),
coronal, shuffled extension-less names, rescale 0.5/-100, RLE / JPEG-LS / JPEG 2000,
Implicit VR, a 40 KB private element before the image tags, an Icon Image Sequence decoy,
SliceThickness/SpacingBetweenSlices that lie, uint16 above 32767, negative int16, one
Enhanced MR file (frames reversed), per-slice rescale, mixed transfer syntaxes, 12 of 16
bits with garbage above, 8-bit, IOP jitter across a rounding boundary; irregular: a missing
slice, 4 then 5 mm spacing, a 12 degree gantry tilt. :func:`build_mixed_folder` adds a
localizer sharing a UID, a second series and junk (text, empty, truncated, SR, SEG, DICOMDIR).
The whole corpus takes about 3 s to write on one core.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from napari_mrisynth.io.dicom_write import write_dicom_series
from napari_mrisynth.volume import Volume

TEMPLATE = (
    Path(nilearn.__file__).parent
    / "datasets"
    / "data"
    / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)

#: Centre of the grids, LPS mm (the template's centre is (0, 18, 22)).
CENTRE = np.array([0.0, 18.0, 18.0])
#: Anisotropic voxels and a non-square matrix, so that any swap of rows/columns or of
#: PixelSpacing's (row, column) order shows up.
SPACING = np.array([3.0, 3.5, 4.0])  # x (columns), y (rows), z (slices)
SHAPE = (8, 56, 48)  # nz, ny, nx
#: Stored value = template value * INTENSITY (int16 well inside its range).
INTENSITY = 4

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(ax_deg: float, ay_deg: float, az_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (degrees)."""
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def plane_direction(row: tuple, col: tuple, reverse: bool = False) -> np.ndarray:
    """Direction (columns = row cosine, column cosine, stacking normal)."""
    row_v, col_v = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row_v, col_v)
    return np.stack([row_v, col_v, -normal if reverse else normal], axis=1)


AXIAL = plane_direction((1, 0, 0), (0, 1, 0))
#: Sagittal stacked right to left: the normal opposes cross(row, col).
SAGITTAL = plane_direction((0, 1, 0), (0, 0, -1), reverse=True)
CORONAL = plane_direction((1, 0, 0), (0, 0, -1))
#: Double oblique: 15 degrees about x, then 10 degrees about y.
OBLIQUE = rotation(15.0, 10.0) @ AXIAL

_template_image: sitk.Image | None = None


def template_image() -> sitk.Image:
    global _template_image
    if _template_image is None:
        _template_image = sitk.ReadImage(str(TEMPLATE))  # LPS physical space, like DICOM
    return _template_image


def sample_template(
    direction: np.ndarray,
    shape: tuple[int, int, int] = SHAPE,
    spacing: np.ndarray = SPACING,
    centre: np.ndarray = CENTRE,
) -> Volume:
    """The template resampled (linear) onto a grid centred on ``centre``; int16 voxels."""
    direction = np.asarray(direction, float)
    spacing = np.asarray(spacing, float)
    nz, ny, nx = shape
    half = spacing * (np.array([nx, ny, nz]) - 1) / 2
    origin = centre - direction @ half
    out = sitk.Resample(
        template_image(),
        [int(nx), int(ny), int(nz)],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        spacing.tolist(),
        direction.reshape(-1).tolist(),
        0.0,
        sitk.sitkFloat32,
    )
    data = np.rint(sitk.GetArrayFromImage(out) * INTENSITY).astype(np.int16)
    return Volume(data, spacing, origin, direction, {"description": "MNI152 sample"})


@dataclass
class CorpusSeries:
    """One series on disk and the truth about it."""

    name: str
    folder: Path
    files: list[Path]
    uid: str
    number: int
    description: str
    #: Ground truth for regular series: voxels after rescale and the written geometry.
    volume: Volume | None
    #: ImagePositionPatient written per slice, in slice order.
    positions: np.ndarray
    regular: bool = True
    rescale: tuple[float, float] = (1.0, 0.0)
    notes: dict = field(default_factory=dict)
    #: Geometry tolerance (mm) for comparisons; larger where the headers themselves jitter.
    atol: float = 1e-4


def _uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _write(
    name: str,
    root: Path,
    volume: Volume,
    *,
    number: int,
    positions: np.ndarray | None = None,
    slices: list[int] | None = None,
    regular: bool = True,
    folder: Path | None = None,
    **kwargs,
) -> CorpusSeries:
    folder = folder or root / name
    description = f"SIMULATED {name}"
    files = write_dicom_series(
        volume,
        folder,
        description=description,
        series_number=number,
        positions=positions,
        slices=slices,
        seed=number,
        **kwargs,
    )
    if positions is None:
        nz = volume.shape[0]
        positions = volume.index_to_lps(np.stack([np.zeros(nz), np.zeros(nz), np.arange(nz)], 1))
    if slices is not None:
        positions = positions[list(slices)]
    return CorpusSeries(
        name=name,
        folder=folder,
        files=files,
        uid=_uid_of(files[0]),
        number=number,
        description=description,
        volume=volume if regular else None,
        positions=np.asarray(positions, float),
        regular=regular,
        rescale=kwargs.get("rescale", (1.0, 0.0)),
    )


#: Which series of the corpus are regular grids (the reader must load them exactly).
REGULAR = (
    "axial",
    "oblique",
    "sagittal",
    "coronal",
    "shuffled",
    "rescaled",
    "rle",
    "jpegls",
    "j2k",
    "implicit",
    "bigheader",
    "icon",
    "thickness_lies",
    "uint16",
    "negative",
    "enhanced",
    "perslice_rescale",
    "mixed_syntax",
    "bits12",
    "uint8",
    "iop_jitter",
)
IRREGULAR = ("gap", "nonuniform", "tilt")


def build_corpus(root: Path) -> dict[str, CorpusSeries]:
    """Write every series of the corpus under ``root``; one folder per series + ``mixed``."""
    root = Path(root)
    out: dict[str, CorpusSeries] = {}
    axial = sample_template(AXIAL)
    out["axial"] = _write("axial", root, axial, number=1)
    out["oblique"] = _write("oblique", root, sample_template(OBLIQUE), number=2)
    out["sagittal"] = _write("sagittal", root, sample_template(SAGITTAL), number=3)
    out["coronal"] = _write("coronal", root, sample_template(CORONAL), number=4)
    out["shuffled"] = _write("shuffled", root, axial, number=5, file_names="shuffled")
    # Rescale: stored = 2 * (value + 100); value = 0.5 * stored - 100 exactly.
    out["rescaled"] = _write("rescaled", root, axial, number=6, rescale=(0.5, -100.0))
    for number, (name, syntax) in enumerate(
        (("rle", RLELossless), ("jpegls", JPEGLSLossless), ("j2k", JPEG2000Lossless)), start=7
    ):
        out[name] = _write(name, root, axial, number=number, transfer_syntax=syntax)

    # Irregular stacks, all axial.
    nz = axial.shape[0]
    gap_index = 4
    out["gap"] = _write(
        "gap",
        root,
        axial,
        number=10,
        slices=[k for k in range(nz) if k != gap_index],
        regular=False,
    )
    out["gap"].notes = {
        "source": axial,
        "indices": [k for k in range(nz) if k != gap_index],
        "missing_index": gap_index,
        "missing_position": axial.index_to_lps([0, 0, gap_index]),
        "nominal_spacing": float(SPACING[2]),
        "gap_spacing": 2 * float(SPACING[2]),
    }
    steps = np.array([4.0] * 4 + [5.0] * (nz - 5))  # 4 mm then 5 mm
    offsets = np.concatenate([[0.0], np.cumsum(steps)])
    normal = axial.direction[:, 2]
    nonuniform_pos = axial.origin + offsets[:, None] * normal
    out["nonuniform"] = _write(
        "nonuniform", root, axial, number=11, positions=nonuniform_pos, regular=False
    )
    out["nonuniform"].notes = {"spacings": (4.0, 5.0), "source": axial, "indices": list(range(nz))}
    tilt_deg = 12.0
    shift = SPACING[2] * np.tan(np.deg2rad(tilt_deg))
    row = axial.direction[:, 0]
    k = np.arange(nz)[:, None]
    tilt_pos = axial.origin + k * SPACING[2] * normal + k * shift * row
    out["tilt"] = _write("tilt", root, axial, number=12, positions=tilt_pos, regular=False)
    out["tilt"].notes = {
        "tilt_deg": tilt_deg,
        "shift_mm": float(shift),
        "source": axial,
        "indices": list(range(nz)),
    }

    # Header variants that trip hand-written parsers.
    out["implicit"] = _write("implicit", root, axial, number=13)
    _rewrite(out["implicit"].files, _to_implicit_vr)
    out["bigheader"] = _write("bigheader", root, axial, number=14)
    _rewrite(out["bigheader"].files, _add_big_private_element)
    out["icon"] = _write("icon", root, axial, number=15)
    _rewrite(out["icon"].files, _add_icon)
    out["thickness_lies"] = _write("thickness_lies", root, axial, number=16)
    _rewrite(out["thickness_lies"].files, _lie_about_thickness)
    # Unsigned values above 32767 (PixelRepresentation 0) and signed negatives.
    big = Volume(axial.data.astype(np.int32) * 60, axial.spacing, axial.origin, axial.direction)
    out["uint16"] = _write("uint16", root, big, number=17)
    negative = axial.with_data((axial.data - 300).astype(np.int16))
    out["negative"] = _write("negative", root, negative, number=18)
    out["enhanced"] = write_enhanced_mr(axial, root / "enhanced" / "EMR0001.dcm", number=19)

    # Philips-style: every slice its own RescaleSlope/Intercept (slope 1, 1/2, 1/4).
    out["perslice_rescale"] = _write("perslice_rescale", root, axial, number=20)
    for k, path in enumerate(out["perslice_rescale"].files):
        ds = pydicom.dcmread(path)
        m, b = (1, 2, 4)[k % 3], 10 * k
        ds.PixelData = ((axial.data[k].astype(np.int32) + b) * m).astype("<i2").tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = _ds_text(1 / m), _ds_text(-b)
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            ds.pop(tag, None)
        ds.save_as(path, enforce_file_format=True)
    # One series, some slices RLE-compressed and the others native.
    mixed = out["mixed_syntax"] = _write("mixed_syntax", root, axial, number=23)
    rle = write_dicom_series(
        axial,
        root / "_rle_tmp",
        description=mixed.description,
        series_number=mixed.number,
        series_uid=mixed.uid,
        transfer_syntax=RLELossless,
        seed=mixed.number,
    )
    for k in (1, 4, 6):
        shutil.copy(rle[k], mixed.files[k])
    shutil.rmtree(root / "_rle_tmp")
    # BitsStored 12 in 16 allocated, with overlay-like garbage in the 4 unused high bits.
    out["bits12"] = _write("bits12", root, axial, number=24)
    _rewrite(out["bits12"].files, _bits12_with_garbage)
    # 8-bit pixels.
    small = axial.with_data((axial.data // 8).astype(np.uint8))
    out["uint8"] = _write("uint8", root, small, number=25)
    _rewrite(out["uint8"].files, _to_8_bit)
    out["uint8"].volume = small
    out["iop_jitter"] = write_iop_jitter(root, number=26)
    return out


#: sin of the in-plane rotation of the "iop_jitter" series: on a 4-decimal rounding boundary.
JITTER_SIN = 0.25645


def write_iop_jitter(root: Path, number: int) -> CorpusSeries:
    """Rotated 14.9 degrees in plane; every other slice's cosines written 2e-6 apart
    (scanners compute IOP per slice), straddling 0.25645: rounding to 4 decimals, as a
    grouping key might, puts alternate slices into different stacks."""
    s = JITTER_SIN
    c = float(np.sqrt(1 - s * s))
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    volume = sample_template(direction)
    series = _write("iop_jitter", root, volume, number=number)
    for k, path in enumerate(series.files):
        ds = pydicom.dcmread(path)
        e = 1e-6 if k % 2 else -1e-6
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (c, s + e, 0.0, -(s + e), c, 0.0)]
        ds.save_as(path, enforce_file_format=True)
    series.atol = 1e-3  # cosines 1e-6 apart over a 200 mm field of view
    return series


def _ds_text(value: float) -> str:
    return f"{value:.6g}"


def _bits12_with_garbage(ds: Dataset) -> None:
    stored = ds.pixel_array.astype(np.uint16)
    assert stored.max() < 4096
    ds.PixelRepresentation = 0
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelData = (stored | 0xF000).astype("<u2").tobytes()
    for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        ds.pop(tag, None)


def _to_8_bit(ds: Dataset) -> None:
    stored = ds.pixel_array.astype(np.uint8)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB"
    for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        ds.pop(tag, None)


def _rewrite(files: list[Path], edit) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        edit(ds)
        if ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian:
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
        else:
            ds.save_as(path, enforce_file_format=True)


def _to_implicit_vr(ds: Dataset) -> None:
    """Implicit VR Little Endian: private elements and undefined-length sequences lose VRs."""
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _add_big_private_element(ds: Dataset) -> None:
    """A 40 KB private blob in group 0009, before every tag a reader needs (the header is
    then larger than any first read of 16 KB), like a Siemens CSA header."""
    block = ds.private_block(0x0009, "MRISYNTH BIG BLOB", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 160)
    block.add_new(0x11, "UN", b"\x00" * 20000)


def _add_icon(ds: Dataset) -> None:
    """An Icon Image Sequence: a nested 16x16 8-bit image with its own Rows, Columns,
    BitsAllocated and PixelData, after the top-level image attributes."""
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 16
    icon.Columns = 16
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.ImagePositionPatient = ["999", "999", "999"]  # a decoy: not a real attribute here
    icon.PixelData = bytes(range(256))
    ds.IconImageSequence = Sequence([icon])
    ds["IconImageSequence"].is_undefined_length = True


def _lie_about_thickness(ds: Dataset) -> None:
    """SliceThickness and SpacingBetweenSlices disagree with the positions (4 mm)."""
    ds.SliceThickness = "1.25"
    ds.SpacingBetweenSlices = "6"


def write_enhanced_mr(volume: Volume, path: Path, number: int) -> CorpusSeries:
    """One Enhanced MR Image Storage object: every slice a frame, frames stored in reverse
    spatial order, positions per frame, orientation/spacing/rescale shared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nz = volume.shape[0]
    order = np.arange(nz)[::-1]  # frame f holds slice order[f]
    positions = volume.index_to_lps(np.stack([np.zeros(nz), np.zeros(nz), np.arange(nz)], 1))
    series_uid = generate_uid(entropy_srcs=["enhanced", str(number)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["enhanced-sop", str(number)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Modality = "MR"
    ds.Manufacturer = "SIMULATED (napari-mrisynth)"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.PatientName = "SIMULATED^ENHANCED"
    ds.PatientID = "SIM-ENH"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["enhanced-study", str(number)])
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["enhanced-for", str(number)])
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.SeriesDescription = "SIMULATED enhanced"
    ds.ImageComments = "SIMULATED image from the MNI152 template; not a real patient"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = nz
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [
        f"{v:.8f}" for v in (*volume.direction[:, 0], *volume.direction[:, 1])
    ]
    measures = Dataset()
    measures.PixelSpacing = [f"{volume.spacing[1]:g}", f"{volume.spacing[0]:g}"]
    measures.SliceThickness = f"{volume.spacing[2]:g}"
    measures.SpacingBetweenSlices = f"{volume.spacing[2]:g}"
    transform = Dataset()
    transform.RescaleSlope = "1"
    transform.RescaleIntercept = "0"
    transform.RescaleType = "US"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for f, k in enumerate(order):
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        content = Dataset()
        content.InStackPositionNumber = int(nz - f)
        content.StackID = "1"
        content.FrameAcquisitionNumber = int(f + 1)
        item.PlanePositionSequence = Sequence([plane])
        item.FrameContentSequence = Sequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(volume.data[order]).astype("<i2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return CorpusSeries(
        name="enhanced",
        folder=path.parent,
        files=[path],
        uid=series_uid,
        number=number,
        description="SIMULATED enhanced",
        volume=volume,
        positions=positions[order],
    )


# -- mixed folder ---------------------------------------------------------------------------
@dataclass
class MixedFolder:
    root: Path
    main: CorpusSeries  # the series whose UID the localizer shares
    other: CorpusSeries
    localizer_files: list[Path]
    junk: dict[str, Path]  # kind -> path; every one of them must be skipped


def build_mixed_folder(root: Path) -> MixedFolder:
    """Two series, a 3-plane localizer sharing the first series' UID, and junk files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    main_vol = sample_template(AXIAL)
    main = _write("mixed_main", root, main_vol, number=21, folder=root / "t1")
    other_vol = sample_template(CORONAL, shape=(8, 40, 44), spacing=np.array([4.0, 4.5, 5.0]))
    other = _write("mixed_other", root, other_vol, number=22, folder=root / "cor")
    # Localizer: three single slices (axial, sagittal, coronal) with a 32x32 matrix of 7 mm
    # pixels, same study, frame of reference and SeriesInstanceUID as ``main``.
    first = pydicom.dcmread(main.files[0], stop_before_pixels=True)
    localizer_files = []
    for n, direction in enumerate((AXIAL, SAGITTAL, CORONAL), start=1):
        plane = sample_template(direction, shape=(1, 32, 32), spacing=np.array([7.0, 7.0, 7.0]))
        folder = root / "loc" / f"plane{n}"
        (path,) = write_dicom_series(
            plane,
            folder,
            description=main.description,
            series_number=main.number,
            study_uid=str(first.StudyInstanceUID),
            series_uid=main.uid,
            frame_of_reference_uid=str(first.FrameOfReferenceUID),
            seed=100 + n,
        )
        ds = pydicom.dcmread(path)
        sop = generate_uid(entropy_srcs=["localizer", main.uid, str(n)])
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = 100 + n
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        target = root / "loc" / f"LOC{n}"
        ds.save_as(target, enforce_file_format=True)
        shutil.rmtree(folder)
        localizer_files.append(target)
    junk_dir = root / "junk"
    junk_dir.mkdir()
    junk = {
        "text": junk_dir / "README.txt",
        "empty": junk_dir / "empty.dcm",
        "truncated": junk_dir / "IM_TRUNC.dcm",
        "sr": junk_dir / "report.dcm",
        "text_sr": junk_dir / "basic_text_sr.dcm",
        "seg": junk_dir / "liver_seg.dcm",
        "dicomdir": root / "DICOMDIR",  # as on every CD export
    }
    junk["text"].write_text("Scanner export notes.\nNot an image.\n")
    junk["empty"].write_bytes(b"")
    source = (PYDICOM_FILES / "MR_small.dcm").read_bytes()
    junk["truncated"].write_bytes(source[: len(source) - 3000])  # cut in the pixel data
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", junk["sr"])
    shutil.copy(PYDICOM_FILES / "reportsi.dcm", junk["text_sr"])
    shutil.copy(PYDICOM_FILES / "liver_1frame.dcm", junk["seg"])
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", junk["dicomdir"])
    return MixedFolder(root, main, other, localizer_files, junk)


# -- references -------------------------------------------------------------------------------
def volume_to_nib(volume: Volume) -> nib.Nifti1Image:
    """Our own (not the package's) Volume -> RAS NIfTI, to compare in canonical space."""
    data = np.asarray(volume.compute().data)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(volume.direction) * np.asarray(volume.spacing)
    affine[:3, 3] = volume.origin
    return nib.Nifti1Image(data.transpose(2, 1, 0), _LPS_TO_RAS @ affine)


def sitk_to_nib(image: sitk.Image) -> nib.Nifti1Image:
    affine = np.eye(4)
    affine[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    data = sitk.GetArrayFromImage(image)
    return nib.Nifti1Image(data.transpose(2, 1, 0), _LPS_TO_RAS @ affine)


def canonical(image) -> tuple[np.ndarray, np.ndarray]:
    """(float64 voxels, RAS affine) in the closest canonical orientation; scaling applied."""
    if isinstance(image, Volume):
        image = volume_to_nib(image)
    elif isinstance(image, sitk.Image):
        image = sitk_to_nib(image)
    elif isinstance(image, str | Path):
        image = nib.load(str(image))
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    image = nib.as_closest_canonical(image)
    return np.asarray(image.dataobj, dtype=np.float64), np.asarray(image.affine, dtype=np.float64)


def assert_same_image(actual, expected, atol: float = 1e-4, what: str = "") -> None:
    """Voxel-for-voxel equal and affines equal to ``atol`` mm, in canonical orientation."""
    a_data, a_aff = canonical(actual)
    e_data, e_aff = canonical(expected)
    prefix = f"{what}: " if what else ""
    assert a_data.shape == e_data.shape, f"{prefix}shape {a_data.shape} != {e_data.shape}"
    np.testing.assert_allclose(
        a_aff, e_aff, atol=atol, rtol=0, err_msg=f"{prefix}affines differ (RAS)"
    )
    diff = a_data != e_data
    assert not diff.any(), (
        f"{prefix}{int(diff.sum())} of {diff.size} voxels differ; first at "
        f"{np.argwhere(diff)[0].tolist()}: {a_data[diff][0]} != {e_data[diff][0]}"
    )


def dcm2niix(source: Path, out: Path, name: str) -> list[Path]:
    """Run ``dcm2niix -z n -f NAME -o OUT SOURCE``; return the NIfTI files it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    dcm2niix_bin = shutil.which("dcm2niix")
    if dcm2niix_bin is None:  # pragma: no cover - the test extra installs it
        raise RuntimeError("dcm2niix is not on PATH")
    proc = subprocess.run(
        [dcm2niix_bin, "-z", "n", "-b", "n", "-f", name, "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode not in (0,):
        raise RuntimeError(f"dcm2niix failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    written = sorted(out.glob(f"{name}*.nii"))
    if not written:
        raise RuntimeError(f"dcm2niix wrote nothing for {source}:\n{proc.stdout}")
    return written


def sitk_read_series(folder: Path, files: list[Path] | None = None) -> sitk.Image:
    """SimpleITK's ImageSeriesReader with GDCMImageIO set explicitly (extension-less names)."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    names = (
        [str(f) for f in files]
        if files is not None
        else list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    )
    reader.SetFileNames(names)
    return reader.Execute()


def pydicom_reference(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """pydicom's pixel_array (frames, rows, columns), rescaled when the header says so."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = pixels.astype(np.float64) * slope + intercept
    return values, ds


def header_geometry(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IPP, row cosine, column cosine) of a single-frame image, floats."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return ipp, iop[:3], iop[3:]


def pydicom_file(name: str) -> Path:
    """A pydicom / pydicom-data test file by name (offline)."""
    return Path(get_testdata_file(name))
