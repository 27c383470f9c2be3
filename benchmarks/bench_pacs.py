"""PACS retrieval time: ``napari_mrisynth.pacs.retrieve`` against bare-library references,
against a real Orthanc on loopback.

Uploads one series (``--slices`` slices of 256 x 256 int16, written by the project's DICOM
writer from the MNI152 template nilearn ships) to a fresh Orthanc (Debian's, with its
DICOMweb plugin) and times, per protocol, the median of ``--runs`` retrievals into an empty
cache:

* **ours**: ``retrieve`` (image-level listing, one file per SOP Instance UID written to a
  temporary name and renamed, the series published by one rename);
* **reference, DIMSE**: a bare pynetdicom C-GET of the series, each instance written with
  ``save_as`` in the C-STORE handler (what a minimal script does);
* **reference, DICOMweb**: dicomweb-client's ``retrieve_series`` (any transfer syntax), each
  instance written with ``save_as`` (what a minimal script does);
* **floor, DICOMweb**: one ``requests`` WADO-RS GET, the multipart body split and each part's
  bytes written as they came (no parsing at all).

The ratio ours / reference is the cost of what the cache guarantees (atomic, resumable,
de-duplicated: an image-level listing of the series first, then temporary names and
renames). Every retrieval is checked to bring every instance.

Usage::

    python benchmarks/bench_pacs.py --slices 192 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.support: the Orthanc the tests start


def series(folder: Path, slices: int) -> Path:
    import numpy as np
    from nilearn import datasets

    from napari_mrisynth.io.dicom_write import write_dicom_series
    from napari_mrisynth.volume import Volume

    template = datasets.load_mni152_template(resolution=1)
    data = np.asarray(template.get_fdata(), dtype=np.float32)
    rng = np.random.default_rng(0)
    block = np.zeros((slices, 256, 256), np.float32)
    source = np.transpose(data, (2, 1, 0))[:slices]
    block[: source.shape[0], : source.shape[1], : source.shape[2]] = source
    block = np.clip(block * 1000 + rng.normal(0, 10, block.shape), 0, 32000).astype(np.int16)
    volume = Volume(block, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    write_dicom_series(volume, folder, description="bench series")
    return folder


def reference_cget(node, study_uid: str, series_uid: str, out: Path) -> int:
    from pydicom import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.presentation import build_context

    from napari_mrisynth.pacs.dimse import STUDY_GET, UNCOMPRESSED

    mr = "1.2.840.10008.5.1.4.1.1.4"
    count = [0]

    def handle(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        count[0] += 1
        return 0x0000

    ae = AE(ae_title="MRISYNTH")
    for context in (build_context(STUDY_GET), build_context(mr, list(UNCOMPRESSED))):
        ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
    assoc = ae.associate(node.host, node.port, ae_title=node.called_aet,
                         ext_neg=[build_role(mr, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, handle)])  # fmt: skip
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID, identifier.SeriesInstanceUID = study_uid, series_uid
    for _status, _ in assoc.send_c_get(identifier, STUDY_GET):
        pass
    assoc.release()
    return count[0]


def reference_client(node, study_uid: str, series_uid: str, out: Path) -> int:
    from napari_mrisynth.pacs import web

    datasets = web.client(node).retrieve_series(study_uid, series_uid,
                                                media_types=web.AS_STORED)  # fmt: skip
    for ds in datasets:
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return len(datasets)


def floor_wado(rest: str, auth, study_uid: str, series_uid: str, out: Path) -> int:
    import requests

    response = requests.get(
        f"{rest}/dicom-web/studies/{study_uid}/series/{series_uid}", auth=auth,
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=120,
    )  # fmt: skip
    response.raise_for_status()
    boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    count = 0
    for part in response.content.split(f"--{boundary}".encode())[1:-1]:
        body = part.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")
        (out / f"{count:05d}.dcm").write_bytes(body)
        count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=192)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tests.support import orthanc as support

    from napari_mrisynth.pacs import find_series, parse_address, retrieve

    work = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    server = support.Orthanc(work / "orthanc", {"mrisynth": ("MRISYNTH", support.free_port())})
    server.start()
    os.environ.update(MRISYNTH_PACS_USERNAME=support.USER, MRISYNTH_PACS_PASSWORD=support.PASSWORD)
    try:
        server.upload(series(work / "series", args.slices))
        (record,) = find_series(server.dicomweb)
        results = {}
        for protocol, address in (
            ("DIMSE C-GET", server.dimse),
            ("DICOMweb WADO-RS", server.dicomweb),
        ):
            node = parse_address(address)
            ours, reference, floor = [], [], []
            for run in range(args.runs):
                clock = time.perf_counter()
                (folder,) = retrieve(node, [record], cache=work / f"cache-{protocol[:5]}-{run}")
                ours.append(time.perf_counter() - clock)
                assert len(list(folder.iterdir())) == args.slices
                target = work / f"ref-{protocol[:5]}-{run}"
                target.mkdir()
                clock = time.perf_counter()
                if node.protocol == "dimse":
                    count = reference_cget(node, record.study_uid, record.series_uid, target)
                else:
                    count = reference_client(node, record.study_uid, record.series_uid, target)
                reference.append(time.perf_counter() - clock)
                assert count == args.slices, count
                if node.protocol == "dicomweb":
                    bare = work / f"floor-{run}"
                    bare.mkdir()
                    clock = time.perf_counter()
                    count = floor_wado(server.rest, (support.USER, support.PASSWORD),
                                       record.study_uid, record.series_uid, bare)  # fmt: skip
                    floor.append(time.perf_counter() - clock)
                    assert count == args.slices, count
            results[protocol] = {
                "ours_s": statistics.median(ours),
                "reference_s": statistics.median(reference),
                "floor_s": statistics.median(floor) if floor else None,
            }
    finally:
        server.stop()
    print(f"\nRetrieving one series of {args.slices} slices (256 x 256 int16, "
          f"{args.slices * 256 * 256 * 2 / 1e6:.0f} MB of pixels) from Orthanc on loopback, "
          f"median of {args.runs} (s)\n")  # fmt: skip
    print(
        "| protocol | ours (listing, atomic cache) | library + save_as | ours ÷ library "
        "| bytes only (floor) |"
    )
    print("|---|---:|---:|---:|---:|")
    for protocol, r in results.items():
        floor_text = "—" if r["floor_s"] is None else f"{r['floor_s']:.2f}"
        print(
            f"| {protocol} | {r['ours_s']:.2f} | {r['reference_s']:.2f} | "
            f"{r['ours_s'] / r['reference_s']:.2f} | {floor_text} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
