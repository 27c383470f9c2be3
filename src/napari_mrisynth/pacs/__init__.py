"""PACS: find, retrieve and send over DIMSE (pynetdicom) and DICOMweb (dicomweb-client).

No Qt here: the PACS dock and ``mrisynth pacs`` both call :mod:`.service`. Retrieved series
land in an atomic, resumable, de-duplicated cache (:mod:`.cache`) and load through the
project's DICOM reader.
"""

from napari_mrisynth.pacs.cache import SeriesCache
from napari_mrisynth.pacs.nodes import Node, NodeBook, PacsError, parse_address, resolve
from napari_mrisynth.pacs.service import SeriesRecord, echo, find_series, retrieve, send

__all__ = [
    "Node",
    "NodeBook",
    "PacsError",
    "SeriesCache",
    "SeriesRecord",
    "echo",
    "find_series",
    "parse_address",
    "resolve",
    "retrieve",
    "send",
]
