"""``mrisynth demo``: napari with the plugin and a simulated subject, or the headless pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_mrisynth import demo


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="napari with the plugin and a simulated subject (headless pipeline without display)",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--headless", action="store_true", help="run the headless pipeline")
    parser.add_argument(
        "--out", type=Path, default=Path("data/demo"), help="where the headless demo writes"
    )
    parser.add_argument("--subjects", type=int, default=4, help="subjects in the headless cohort")
    parser.add_argument(
        "--screenshot", type=Path, help="save a screenshot of the viewer here and close it"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.headless or not demo.has_display():
        if not args.headless:
            print("No display found (DISPLAY/WAYLAND_DISPLAY unset): running the headless demo.")
            print(
                "For the napari window here, run: xvfb-run -a mrisynth demo --screenshot shot.png"
            )
        return demo.run_headless(args.out, args.subjects)
    return demo.run_viewer(args.screenshot)
