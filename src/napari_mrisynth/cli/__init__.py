"""The ``mrisynth`` command: every station of the pipeline, headless.

Each module of this package adds the subcommands of one station with ``register(subparsers)``
(its parser and ``func``) and calls that station's public functions; a command's work is
imported only when it runs, so ``mrisynth --help`` stays fast and torch is never imported by
commands that do not need it. The CLI sits on top of every station: it may use them all,
and none of them uses it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_mrisynth._version import __version__
from napari_mrisynth.errors import MrisynthError

#: Modules that contribute subcommands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "napari_mrisynth.cli.series",  # series, convert
    "napari_mrisynth.cli.pacs",  # pacs echo|find|get|send|nodes|cache
    "napari_mrisynth.cli.cohort",  # cohort
    "napari_mrisynth.cli.demo",  # demo
    "napari_mrisynth.cli.models",  # models list|show|search|verify
    "napari_mrisynth.cli.inference",  # segment, classify
    "napari_mrisynth.cli.train",  # train segmentation|classification|vae|gan|ldm
    "napari_mrisynth.cli.generate",  # generate
    "napari_mrisynth.cli.report",  # report classifier|segmenter
    "napari_mrisynth.cli.evaluate",  # evaluate, audit
    "napari_mrisynth.cli.study",  # study, curate
    "napari_mrisynth.cli.export",  # export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrisynth",
        description="Exact brain MRI loading, simulated bvFTD cohorts and synthesis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MrisynthError as exc:
        print(f"mrisynth {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # A database the ratings store cannot use (locked for too long, a foreign schema,
        # a server gone): one line naming the problem, not a SQLAlchemy traceback.
        if not type(exc).__module__.startswith("sqlalchemy"):
            raise
        reason = getattr(exc, "orig", None) or exc
        print(f"mrisynth {args.command}: database error: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
