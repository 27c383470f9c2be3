"""Write a `Volume` as a DICOM MR image series, one file per slice.

Used for the simulated cohort, the test fixtures (axial, oblique, gaps, tilt, localizers,
compressed) and the benchmarks. Headers look like a vendor export: ~140 elements with
private tags and a private sequence of undefined length, so readers are tested on what a
PACS really sends. Every series written here says it is simulated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from napari_mrisynth.volume import Volume

#: Fixed study/series dates keep every file of a series identical outside its slice attributes.
SIMULATION_DATE = "20260101"
SIMULATION_TIME = "120000"


@dataclass(frozen=True)
class SimulatedPatient:
    """Fake identifiers, so that de-identification can be tested on them later."""

    name: str = "SIMULATED^SUBJECT"
    patient_id: str = "SIM-0000"
    birth_date: str = "19600101"
    sex: str = "O"
    age_years: int = 66


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(value: float, decimals: int = 6) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text[:16]


def _storage_dtype(values: np.ndarray) -> tuple[np.dtype, int]:
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo >= 0 and hi > 32767:
        if hi > 65535:
            raise ValueError(f"stored values up to {hi} do not fit in 16 bits")
        return np.dtype("<u2"), 0
    if lo < -32768 or hi > 32767:
        raise ValueError(f"stored values {lo}..{hi} do not fit in int16")
    return np.dtype("<i2"), 1


def _vendor_elements(ds: Dataset, rng: np.random.Generator) -> None:
    """Acquisition attributes and private tags of a 3D T1 MPRAGE export."""
    ds.ScanningSequence = ["GR", "IR"]
    ds.SequenceVariant = ["SK", "SP", "MP"]
    ds.ScanOptions = "IR"
    ds.MRAcquisitionType = "3D"
    ds.SequenceName = "*tfl3d1_16ns"
    ds.AngioFlag = "N"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InversionTime = "900"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "123.2546"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.NumberOfPhaseEncodingSteps = 240
    ds.EchoTrainLength = 1
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "93.75"
    ds.PixelBandwidth = "240"
    ds.DeviceSerialNumber = "00000"
    ds.SoftwareVersions = "napari-mrisynth simulator"
    ds.ProtocolName = "t1_mprage_sag_p2_iso"
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, 256, 240, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = "9"
    ds.VariableFlipAngleFlag = "N"
    ds.SAR = "0.0523"
    ds.dBdt = "0"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "BRAIN"
    ds.ContrastBolusAgent = ""
    ds.ReceiveCoilName = "HeadNeck_20"
    ds.StationName = "SIMULATOR"
    ds.InstitutionName = "SIMULATED INSTITUTION"
    ds.InstitutionAddress = "Nowhere 0, Simulated City"
    ds.ReferringPhysicianName = "SIMULATED^REFERRER"
    ds.OperatorsName = "SIMULATED^OPERATOR"
    ds.PerformingPhysicianName = ""
    ds.NameOfPhysiciansReadingStudy = ""
    ds.AccessionNumber = "SIM000000"
    ds.RequestedProcedureDescription = "MRI BRAIN"
    ds.PerformedProcedureStepDescription = "MRI BRAIN"
    ds.PatientWeight = "70"
    ds.PatientSize = "1.70"
    ds.AdditionalPatientHistory = "simulated"
    ds.LargestImagePixelValue = 0  # set per slice
    ds.SmallestImagePixelValue = 0
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = SIMULATION_DATE
    ds.AcquisitionTime = SIMULATION_TIME
    ds.ContentDate = SIMULATION_DATE
    ds.ContentTime = SIMULATION_TIME
    ds.PositionReferenceIndicator = ""
    ds.ImagesInAcquisition = 0  # set per series
    ref = Dataset()
    ref.ReferencedSOPClassUID = MRImageStorage
    ref.ReferencedSOPInstanceUID = _uid("ref", rng.integers(1 << 30))
    ds.ReferencedImageSequence = DicomSequence([ref])
    ds.ReferencedImageSequence.is_undefined_length = True
    # Private tags in groups no vendor uses (dcm2niix reads 0019/0029 as Siemens fields),
    # including an undefined-length sequence
    block = ds.private_block(0x0077, "MRISYNTH SIMULATED HEADER", create=True)
    for offset in range(0x08, 0x30):
        block.add_new(offset, "DS", _ds(float(rng.normal(0, 10)), 4))
    block.add_new(0x30, "OB", rng.integers(0, 255, 1536, dtype=np.uint8).tobytes())
    item = Dataset()
    item.add_new(0x00770010, "LO", "MRISYNTH SIMULATED HEADER")
    item.add_new(0x00771008, "LO", "PhoenixProtocolFragment")
    item.add_new(0x00771009, "OB", b"\x01\x02" * 40)
    block.add_new(0x31, "SQ", DicomSequence([item, item]))
    ds[block.get_tag(0x31)].is_undefined_length = True
    csa = ds.private_block(0x0079, "MRISYNTH SIMULATED BLOB", create=True)
    csa.add_new(0x08, "CS", "IMAGE NUM 4")
    csa.add_new(0x09, "LO", "20260101")
    csa.add_new(0x10, "OB", rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    csa.add_new(0x18, "CS", "MR")
    csa.add_new(0x19, "LO", "20260101")
    csa.add_new(0x20, "OB", rng.integers(0, 255, 2048, dtype=np.uint8).tobytes())


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    description: str = "SIMULATED T1 MPRAGE",
    series_number: int = 1,
    patient: SimulatedPatient | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    file_names: str = "instance",
    positions: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
    transfer_syntax: str = ExplicitVRLittleEndian,
    vendor_header: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` as one DICOM MR file per slice.

    Parameters
    ----------
    volume : Volume
        Integer-valued voxels (after rescale: stored = (value - intercept) / slope).
    folder : path
        Created if missing.
    file_names : {"instance", "shuffled", "uid"}
        ``IM0001.dcm``...; extension-less random names in random order; or SOP UIDs.
    positions : (nz, 3) array, optional
        ImagePositionPatient per slice, overriding the volume's geometry (gantry tilt,
        non-uniform spacing tests).
    slices : sequence of int, optional
        Only these slice indices are written (a gap test leaves one out).
    rescale : (slope, intercept)
        Rescale Slope / Intercept written into every file.
    transfer_syntax : UID
        Explicit VR Little Endian by default; RLE Lossless, JPEG-LS Lossless and JPEG 2000
        Lossless are encoded through pydicom's encoders.

    Returns
    -------
    list of Path
        The files written, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patient = patient or SimulatedPatient()
    data = np.asarray(volume.compute().data)
    slope, intercept = rescale
    stored = np.rint((data.astype(np.float64) - intercept) / slope)
    dtype, pixel_representation = _storage_dtype(stored)
    stored = stored.astype(dtype)
    nz, ny, nx = stored.shape
    study_uid = study_uid or _uid("study", patient.patient_id, seed)
    series_uid = series_uid or _uid("series", study_uid, series_number, description, seed)
    frame_uid = frame_of_reference_uid or _uid("frame", study_uid)
    if positions is None:
        positions = volume.index_to_lps(np.stack([np.zeros(nz), np.zeros(nz), np.arange(nz)], 1))
    positions = np.asarray(positions, dtype=np.float64)
    row_cos, col_cos = volume.direction[:, 0], volume.direction[:, 1]
    normal = volume.direction[:, 2]
    indices = list(range(nz)) if slices is None else list(slices)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MRISYNTH_010"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = SIMULATION_DATE
    ds.StudyTime = ds.SeriesTime = SIMULATION_TIME
    ds.Modality = "MR"
    ds.Manufacturer = "SIMULATED (napari-mrisynth)"
    ds.ManufacturerModelName = "Simulated 3T"
    ds.StudyDescription = "SIMULATED BRAIN MRI"
    ds.SeriesDescription = description
    ds.ImageComments = "SIMULATED image from the MNI152 template; not a real patient"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{int(patient.age_years):03d}Y"
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyID = "1"
    ds.SeriesNumber = int(series_number)
    ds.SliceThickness = _ds(volume.spacing[2])
    ds.SpacingBetweenSlices = _ds(volume.spacing[2])
    ds.ImageOrientationPatient = [_ds(v, 8) for v in (*row_cos, *col_cos)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(volume.spacing[1]), _ds(volume.spacing[0])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_representation
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "US"
    lo, hi = float(data.min()), float(data.max())
    ds.WindowCenter = _ds((lo + hi) / 2, 2)
    ds.WindowWidth = _ds(max(hi - lo, 1.0), 2)
    if vendor_header:
        _vendor_elements(ds, rng)
        ds.ImagesInAcquisition = len(indices)

    names = [f"IM{k + 1:04d}.dcm" for k in range(nz)]
    if file_names == "shuffled":
        names = [f"{int(v):016x}" for v in rng.integers(0, 1 << 62, nz)]
    written = []
    compressed = UID(transfer_syntax) != ExplicitVRLittleEndian
    for number, k in enumerate(indices, start=1):
        sop_uid = _uid("sop", series_uid, k)
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(float(positions[k] @ normal))
        plane = np.ascontiguousarray(stored[k])
        if vendor_header:
            ds.SmallestImagePixelValue = int(plane.min())
            ds.LargestImagePixelValue = int(plane.max())
            vr = "US" if pixel_representation == 0 else "SS"
            ds["SmallestImagePixelValue"].VR = vr
            ds["LargestImagePixelValue"].VR = vr
        ds.PixelData = plane.tobytes()
        ds["PixelData"].VR = "OW"
        if compressed:
            ds.compress(transfer_syntax, encoding_plugin=_encoder_for(transfer_syntax))
        name = sop_uid if file_names == "uid" else names[k]
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
        if compressed:  # compress() replaced the pixel data and the transfer syntax
            del ds.PixelData
    return written


def _encoder_for(transfer_syntax: str) -> str:
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    return {
        RLELossless: "pylibjpeg",
        JPEGLSLossless: "pyjpegls",
        JPEG2000Lossless: "pylibjpeg",
    }.get(UID(transfer_syntax), "")
