"""The ``mrisynth`` command: every station of the pipeline, headless.

Each subcommand lives beside the code it drives, in a module with ``register(subparsers)``
that adds its parser and sets ``func``; modules are imported only when listed here, so
``mrisynth --help`` stays fast and torch is never imported by commands that do not need it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_mrisynth import __version__
from napari_mrisynth.errors import MrisynthError

#: Modules that contribute subcommands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "napari_mrisynth.io.commands",  # series, convert
    "napari_mrisynth.cohort.commands",  # cohort
    "napari_mrisynth.demo",  # demo
    "napari_mrisynth.models.commands",  # models list|show|search|verify
    "napari_mrisynth.models.inference_commands",  # segment, classify
    "napari_mrisynth.training.commands",  # train segmentation|classification|vae|gan|ldm
    "napari_mrisynth.synthesis.commands",  # generate
    "napari_mrisynth.reports.commands",  # report classifier|segmenter
    "napari_mrisynth.evaluation.commands",  # evaluate, audit
    "napari_mrisynth.turing.commands",  # study, curate
    "napari_mrisynth.export.commands",  # export
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
