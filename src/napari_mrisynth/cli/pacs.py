"""``mrisynth pacs echo|find|get|send|nodes|cache``: a PACS over DIMSE or DICOMweb."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from napari_mrisynth.cli._options import ProgressBar

NODE_HELP = (
    "dimse://CALLED_AET@host:port, dicomweb:http(s)://host:port/root, or a name from "
    "'mrisynth pacs nodes list'. Credentials: MRISYNTH_PACS_[NAME_]USERNAME/_PASSWORD/_TOKEN "
    "or the OS keyring"
)


def _node(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", help=NODE_HELP)
    parser.add_argument("--aet", default="MRISYNTH", help="our calling AE title (DIMSE)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")


def register(subparsers: argparse._SubParsersAction) -> None:
    pacs = subparsers.add_parser(
        "pacs",
        help="find, retrieve and send series: a PACS over DIMSE or DICOMweb",
        description="Talk to a PACS: C-ECHO, C-FIND, C-GET/C-MOVE, C-STORE (pynetdicom) or "
        "QIDO-RS, WADO-RS, STOW-RS (dicomweb-client). Retrieved series go to a local cache, "
        "each complete or not at all.",
    )
    sub = pacs.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)

    echo = sub.add_parser("echo", help="is the node there, and does it accept us?")
    _node(echo)
    echo.set_defaults(func=run_echo)

    find = sub.add_parser("find", help="list the series matching a search")
    _node(find)
    find.add_argument("--patient-id")
    find.add_argument("--patient-name", help="free text; * and ? are wildcards")
    find.add_argument("--study-date", help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    find.add_argument("--modality", help="e.g. MR")
    find.add_argument("--description", help="series description, free text")
    find.add_argument("--json", action="store_true")
    find.set_defaults(func=run_find)

    get = sub.add_parser("get", help="retrieve series into the cache (and --out)")
    _node(get)
    get.add_argument(
        "--series", action="append", required=True, help="SeriesInstanceUID; repeatable"
    )
    get.add_argument("--out", type=Path, help="also copy each series to OUT/<SeriesInstanceUID>")
    get.add_argument(
        "--cache", type=Path, help="cache folder (default: $MRISYNTH_PACS_CACHE or the user cache)"
    )
    get.add_argument(
        "--move",
        type=int,
        metavar="PORT",
        help="C-MOVE to our storage SCP on PORT instead of C-GET (the node must know our "
        "AE title at this machine and PORT)",
    )
    get.add_argument("--json", action="store_true")
    get.set_defaults(func=run_get)

    send = sub.add_parser("send", help="send series folders, an export or DICOM SEG files")
    _node(send)
    send.add_argument("paths", nargs="+", type=Path, help="files or folders (searched for DICOM)")
    send.set_defaults(func=run_send)

    nodes = sub.add_parser("nodes", help="named nodes (addresses only; never credentials)")
    nsub = nodes.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)
    add = nsub.add_parser("add", help="name a node")
    add.add_argument("name")
    add.add_argument("address", help="dimse://AET@host:port or dicomweb:http(s)://…")
    add.set_defaults(func=run_nodes_add)
    listing = nsub.add_parser("list", help="the named nodes")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_nodes_list)
    remove = nsub.add_parser("remove", help="forget a node")
    remove.add_argument("name")
    remove.set_defaults(func=run_nodes_remove)

    cache = sub.add_parser("cache", help="the local cache of retrieved series")
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    clist = csub.add_parser("list", help="cached series")
    clist.add_argument("--cache", type=Path)
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(func=run_cache_list)
    clear = csub.add_parser("clear", help="delete cached series (and interrupted retrievals)")
    clear.add_argument("--cache", type=Path)
    clear.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only series fetched before"
    )
    clear.set_defaults(func=run_cache_clear)


def run_echo(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import echo, resolve

    node = resolve(args.node)
    seconds = echo(node, aet=args.aet, timeout=args.timeout)
    print(f"{node}: answered in {seconds * 1000:.0f} ms")
    return 0


def run_find(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import find_series

    rows = find_series(
        args.node,
        patient_id=args.patient_id,
        patient_name=args.patient_name,
        study_date=args.study_date,
        modality=args.modality,
        description=args.description,
        aet=args.aet,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps([r.row() for r in rows], indent=2))
        return 0
    for r in rows:
        count = "?" if r.instances is None else r.instances
        print(
            f"{r.patient_id:<12} {r.study_date:<8} {r.modality:<3} {count:>5}  "
            f"{r.series_description or '(no description)':<32} {r.series_uid}"
        )
    print(f"{len(rows)} series")
    return 0


def run_get(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import retrieve

    cancel = threading.Event()
    with ProgressBar("retrieving", unit="instance") as progress:
        try:
            folders = retrieve(
                args.node,
                args.series,
                cache=args.cache,
                out=args.out,
                method="move" if args.move else "get",
                port=args.move,
                aet=args.aet,
                timeout=args.timeout,
                progress=progress,
                cancel=cancel,
            )
        except KeyboardInterrupt:
            cancel.set()
            raise
    if args.json:
        print(json.dumps([str(f) for f in folders], indent=2))
    else:
        for folder in folders:
            print(folder)
    return 0


def run_send(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import resolve, send

    node = resolve(args.node)
    with ProgressBar("sending", unit="instance") as progress:
        count = send(node, args.paths, aet=args.aet, timeout=args.timeout, progress=progress)
    print(f"{node}: {count} instance(s) stored")
    return 0


def run_nodes_add(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import NodeBook

    book = NodeBook()
    node = book.add(args.name, args.address)
    print(f"{node} added to {book.path}")
    return 0


def run_nodes_list(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import NodeBook
    from napari_mrisynth.pacs.nodes import describe

    nodes = NodeBook().nodes()
    if args.json:
        print(json.dumps([describe(n) for n in nodes], indent=2))
        return 0
    for node in nodes:
        print(f"{node.name:<20} {node.address}")
    return 0


def run_nodes_remove(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import NodeBook

    NodeBook().remove(args.name)
    print(f"{args.name} removed")
    return 0


def run_cache_list(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import SeriesCache

    cache = SeriesCache(args.cache)
    entries = cache.entries()
    if args.json:
        print(json.dumps([{**e.manifest, "folder": str(e.folder)} for e in entries], indent=2))
        return 0
    for e in entries:
        print(f"{e.manifest['fetched_at']}  {e.manifest['instances']:>5}  {e.folder}")
    print(f"{len(entries)} series in {cache.root}")
    return 0


def run_cache_clear(args: argparse.Namespace) -> int:
    from napari_mrisynth.pacs import SeriesCache

    cache = SeriesCache(args.cache)
    removed, freed = cache.clear(args.older_than)
    print(f"{cache.root}: {removed} series removed, {freed / 1e6:.1f} MB freed")
    return 0
