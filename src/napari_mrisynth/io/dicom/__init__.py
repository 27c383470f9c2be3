"""Find DICOM image series in a folder and read them into exact `Volume` objects.

The scan (:mod:`.scan`) groups images by SeriesInstanceUID, splits each group into stacks of
one geometry (orientation, matrix, pixel size; localizers apart), sorts each stack along its
slice normal and checks it (:mod:`.stack`): spacing comes from the positions, and a missing
slice, non-uniform spacing, a sheared stack (gantry tilt) or duplicate positions are
reported with the positions and spacings found. Irregular stacks are refused unless
resampling is asked for (:mod:`.load`). Before any pixel is read, :mod:`.encoding` refuses a
slice whose pixel encoding contradicts itself (BitsAllocated against the data length,
RescaleSlope NaN or 0, ...) naming the file and the attribute, and inverts MONOCHROME1
with a :class:`DicomConversionWarning` saying how.

Speed: uncompressed Little Endian files are read by a small header walker (:mod:`._walker`,
through :mod:`.headers`) and their pixel bytes go straight into the output array
(:mod:`.pixels`); every other file (big endian, deflate, enhanced multi-frame, anything the
walker does not parse) is read with pydicom, and compressed pixel data is decoded by
pydicom with the fastest installed plugin.
"""

from napari_mrisynth.io.dicom.encoding import DicomConversionWarning
from napari_mrisynth.io.dicom.headers import is_dicom_file
from napari_mrisynth.io.dicom.load import load_dicom, load_series
from napari_mrisynth.io.dicom.scan import FolderScan, Progress, SkippedFile, scan_folder
from napari_mrisynth.io.dicom.stack import Series

__all__ = [
    "DicomConversionWarning",
    "FolderScan",
    "Progress",
    "Series",
    "SkippedFile",
    "is_dicom_file",
    "load_dicom",
    "load_series",
    "scan_folder",
]
