"""``mrisynth study create|add-rater|new-secret|seal|grant|status|rate|report|csv`` and
``mrisynth curate list|approve|reject|apply|audit``.

Commands that need the truth (report, csv, curation, adding raters) take the study's key
file (``--key``); those a rater runs (rate, status) never do.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from napari_mrisynth.cli._options import ProgressBar, add_device_option, chosen_device, comma_names

DB_HELP = "ratings database: a SQLite file, or a SQLAlchemy URL (e.g. postgresql+psycopg://…)"
KEY_HELP = (
    "the study's answer key: the separate SQLite file written by 'study create' (keep it "
    "from the raters), or a database URL whose key_* tables raters are not granted"
)
#: Where ``study rate`` reads a rater's secret from before it asks for it.
SECRET_ENV = "MRISYNTH_RATER_SECRET"


def _db(parser: argparse.ArgumentParser, *, key: bool = False) -> None:
    parser.add_argument("--db", required=True, help=DB_HELP)
    parser.add_argument("--study", help="study id (needed when the database holds several)")
    if key:
        parser.add_argument("--key", required=True, help=KEY_HELP)


def _print_secrets(secrets: dict[str, str]) -> None:
    print("  rater secrets (shown once, only their hashes are kept; hand each to its rater):")
    for rater, secret in secrets.items():
        print(f"    {rater:<20} {secret}")


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser(
        "study",
        help="visual Turing tests: create a blinded study, rate it in napari, report",
        description="Blinded reader studies of real vs synthetic volumes.",
    )
    sub = study.add_subparsers(dest="study_command", metavar="ACTION", required=True)

    create = sub.add_parser(
        "create",
        help="freeze a study: volumes, trial items and each rater's seeded order",
        description=(
            "Prepare every volume identically (study grid at the real scans' own resolution, "
            "one intensity mapping, uint8) and freeze the design into the ratings database. "
            "Every rater "
            "rates the same items, each in their own seeded order; in pair mode the real "
            "volume is on the left in exactly half of each rater's trials."
        ),
    )
    create.add_argument(
        "--real",
        type=Path,
        required=True,
        help="real scans: a BIDS cohort (participants.tsv) or a folder",
    )
    create.add_argument(
        "--synthetic",
        type=Path,
        required=True,
        help="synthetic volumes (with the generator's JSON sidecars)",
    )
    create.add_argument("--raters", required=True, help="comma-separated rater ids")
    create.add_argument("--mode", choices=("pair", "single"), default="pair")
    create.add_argument("--trials", type=int, required=True, help="trials per rater")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--db", required=True, help=DB_HELP)
    create.add_argument("--key", required=True, help=KEY_HELP + " (created when missing)")
    create.add_argument("--study", default="study", help="study id (default 'study')")
    create.add_argument(
        "--spacing",
        type=float,
        help="voxel size of the study grid in mm (default: the real scans' own, so they are "
        "shown at their native resolution)",
    )
    create.add_argument(
        "--resolution",
        type=float,
        help="bring every volume down to this coarser resolution in mm first (off by default: "
        "it blurs the real scans to a coarse generator's level; the report says so)",
    )
    create.add_argument(
        "--cache", type=Path, help="folder for the prepared volumes (default: beside the database)"
    )
    add_device_option(create, help="where to resample (auto, cpu, cuda)")
    create.set_defaults(func=run_create)

    add = sub.add_parser(
        "add-rater", help="give a new rater the study's items, in their order, and a secret"
    )
    _db(add, key=True)
    add.add_argument("rater", help="the new rater's id")
    add.set_defaults(func=run_add_rater)

    secret = sub.add_parser("new-secret", help="a new secret for a rater who lost theirs")
    _db(secret, key=True)
    secret.add_argument("rater", help="the rater's id")
    secret.set_defaults(func=run_new_secret)

    seal = sub.add_parser(
        "seal",
        help="move the answer key out of a study file made before keys were sealed",
        description="Writes the key (kinds, sources, provenance, curation) to --key, removes "
        "it from the study file (vacuumed, so no deleted page keeps it) and issues every "
        "rater a secret.",
    )
    seal.add_argument("--db", required=True, help=DB_HELP)
    seal.add_argument("--key", required=True, help="the new key file (or URL)")
    seal.set_defaults(func=run_seal)

    grant = sub.add_parser(
        "grant",
        help="let a PostgreSQL role rate a server study without reading its key",
    )
    grant.add_argument("--db", required=True, help="the study's database URL (as its owner)")
    grant.add_argument("--study", help="study id (needed when the database holds several)")
    grant.add_argument("--role", required=True, help="the raters' PostgreSQL role")
    grant.add_argument(
        "--rater",
        help="the one rater this role is for: row-level security then shows it only that "
        "rater's trials, ratings and drafts (default: a role every rater shares)",
    )
    grant.set_defaults(func=run_grant)

    status = sub.add_parser("status", help="how far each rater is")
    _db(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)

    rate = sub.add_parser("rate", help="open napari with the Visual Turing test widget")
    _db(rate)
    rate.add_argument(
        "--rater",
        help=f"your rater id; your secret is read from ${SECRET_ENV} or asked for",
    )
    rate.set_defaults(func=run_rate)

    report = sub.add_parser(
        "report",
        help="statistics per rater, per tier and pooled; Markdown, HTML, JSON, PNGs",
        description=(
            "Accuracy with a Wilson 95% CI, exact binomial test against 50%, sensitivity "
            "and specificity (synthetic = positive), AUC of the confidence-weighted calls, "
            "Cohen's (2 raters) or Fleiss' kappa, per experience tier; per synthetic volume "
            "its fooled rate and mean realism."
        ),
    )
    _db(report, key=True)
    report.add_argument("--out", type=Path, required=True, help="report folder")
    report.add_argument("--json", action="store_true", help="print the statistics as JSON")
    report.set_defaults(func=run_report)

    export_csv = sub.add_parser("csv", help="every rating (with the truth) as CSV")
    _db(export_csv, key=True)
    export_csv.add_argument("--out", type=Path, required=True, help="CSV file")
    export_csv.set_defaults(func=run_csv)

    curate = subparsers.add_parser(
        "curate",
        help="review a study's synthetic volumes by scores and audit; approve or reject",
    )
    csub = curate.add_subparsers(dest="curate_command", metavar="ACTION", required=True)
    listing = csub.add_parser("list", help="synthetic volumes ranked; preselected by rules")
    _db(listing, key=True)
    listing.add_argument(
        "--rules",
        default="realism>=4,fooled>=0.5,unflagged",
        help="preselection rules (default: realism>=4,fooled>=0.5,unflagged)",
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_curate_list)

    for action, decision in (("approve", "approved"), ("reject", "rejected")):
        p = csub.add_parser(action, help=f"record that volumes are {decision}")
        _db(p, key=True)
        p.add_argument("volumes", nargs="+", help="volume ids (V001 …)")
        p.add_argument("--curator", required=True, help="your name")
        p.add_argument("--reason", default="", help="why (required to reject or override)")
        if decision == "approved":
            p.add_argument(
                "--override",
                action="store_true",
                help="approve although the volume fails the rules (needs --reason; recorded "
                "in the decision and the export manifest)",
            )
            p.add_argument("--rules", default="realism>=4,fooled>=0.5,unflagged",
                           help="the rules a volume must meet to be approved without "
                           "--override")  # fmt: skip
        p.set_defaults(func=run_decide, decision=decision)

    apply = csub.add_parser("apply", help="decide every undecided volume by the rules")
    _db(apply, key=True)
    apply.add_argument("--rules", default="realism>=4,fooled>=0.5,unflagged")
    apply.add_argument("--curator", required=True)
    apply.add_argument("--redecide", action="store_true", help="also volumes already decided")
    apply.set_defaults(func=run_apply)

    audit = csub.add_parser("audit", help="memorization audit of the study's synthetic volumes")
    _db(audit, key=True)
    audit.add_argument(
        "--train",
        type=Path,
        required=True,
        help="the generator's training scans (BIDS cohort or folder)",
    )
    audit.set_defaults(func=run_audit)


def run_create(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.design import create_study

    raters = list(comma_names(args.raters))
    with ProgressBar("preparing volumes") as progress:
        study = create_study(
            args.db,
            key=args.key,
            real=args.real,
            synthetic=args.synthetic,
            raters=raters,
            mode=args.mode,
            trials=args.trials,
            seed=args.seed,
            study_id=args.study,
            spacing=args.spacing,
            resolution=args.resolution,
            cache=args.cache,
            device=chosen_device(args.device, "study create"),
            progress=progress,
        )
    grid = study["grid"]
    print(
        f"study {study['study_id']!r}: {study['mode']} mode, {study['trials_per_rater']} "
        f"trials for each of {len(raters)} rater(s) ({', '.join(raters)}), seed "
        f"{study['seed']}"
    )
    blurred = (f", every volume first brought down to {grid['resolution']:g} mm (asked for)"
               if grid.get("degraded") else ", nothing blurred first")  # fmt: skip
    print(
        f"  volumes prepared on a {grid['spacing']:g} mm grid {tuple(grid['shape'])}"
        f"{blurred}, into {study['cache']}"
    )
    print(f"  database (for the raters): {args.db}")
    print(f"  answer key (NOT for the raters; report, curate and export need it): {args.key}")
    _print_secrets(study["secrets"])
    print(f"  rate with: mrisynth study rate --db {args.db} --rater {raters[0]}")
    return 0


def run_add_rater(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.design import add_rater

    secret = add_rater(args.db, args.rater, key=args.key, study_id=args.study)
    print(f"rater {args.rater!r} added")
    _print_secrets({args.rater: secret})
    return 0


def run_new_secret(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.design import reissue_secret

    secret = reissue_secret(args.db, args.rater, key=args.key, study_id=args.study)
    print(f"rater {args.rater!r}: a new secret; the old one no longer signs in")
    _print_secrets({args.rater: secret})
    return 0


def run_seal(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.key import seal

    issued = seal(args.db, args.key)
    print(f"{args.db}: answer key moved to {args.key}; the study file holds neutral ids only")
    for study_id, secrets in issued.items():
        print(f"study {study_id!r}:")
        _print_secrets(secrets)
    return 0


def run_grant(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.key import grant_rater_role

    grant_rater_role(args.db, args.role, rater=args.rater, study_id=args.study)
    whose = f"as rater {args.rater!r} only" if args.rater else "as any of the study's raters"
    print(f"role {args.role!r} may rate in {args.db} {whose}, and cannot read its key_* tables")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.results import study_status

    status = study_status(args.db, args.study)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"study {status['study_id']!r}: {status['rated']} of {status['total']} trials rated")
    for rater, entry in status["raters"].items():
        signed = entry["tier"] or "not signed in"
        print(f"  {rater:<20} {entry['rated']:>4} / {entry['total']:<4} {signed}")
    return 0


def run_rate(args: argparse.Namespace) -> int:
    from napari_mrisynth._widgets._turing_widget import rate_in_napari

    secret = os.environ.get(SECRET_ENV)
    if not secret and args.rater and sys.stdin.isatty():
        secret = getpass.getpass(f"secret for rater {args.rater}: ")
    return rate_in_napari(str(args.db), args.rater, secret)


def run_report(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.results import study_report

    result = study_report(args.db, args.out, key=args.key, study_id=args.study)
    if args.json:
        print(json.dumps(result["statistics"], indent=2, sort_keys=True))
        return 0
    pooled = result["statistics"]["pooled"]
    acc = pooled["accuracy"]
    low, high = acc["ci95"]
    print(
        f"pooled accuracy {acc['value']:.3f} (95% CI {low:.3f}-{high:.3f}, "
        f"{acc['correct']}/{acc['n']}), binomial p = {pooled['binomial']['p_value']:.4g}"
    )
    agreement = result["statistics"]["agreement"]
    if agreement.get("kappa") is not None:
        print(
            f"{agreement['method']} kappa {agreement['kappa']:.3f} over "
            f"{agreement['n_items']} items"
        )
    print(f"report: {result['files']['html']}")
    return 0


def run_csv(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.results import ratings_csv

    print(ratings_csv(args.db, args.out, key=args.key, study_id=args.study))
    return 0


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def run_curate_list(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.curation import CurationRules, candidates

    rules = CurationRules.parse(args.rules)
    rows = [c.row() for c in candidates(args.db, key=args.key, study_id=args.study, rules=rules)]
    if args.json:
        print(json.dumps({"rules": rules.describe(), "volumes": rows}, indent=2))
        return 0
    print(f"rules: {rules.describe()}")
    for row in rows:
        realism = "—" if row["mean_realism"] is None else f"{row['mean_realism']:.2f}"
        similarity = "—" if row["audit_similarity"] is None else f"{row['audit_similarity']:.3f}"
        mark = "✓" if row["preselected"] else " "
        decision = row["decision"] or "undecided"
        fid = "" if row["generator_fid"] is None else f" (FID {row['generator_fid']:.1f})"
        print(
            f"{mark} {row['volume_id']}  {str(row['diagnosis']):<8} fooled "
            f"{_percent(row['fooled_rate']):>4}  realism {realism:>4}  audit {similarity:>5}  "
            f"{decision:<9} {row['generator']}{fid}"
        )
        if row["failures"]:
            print(f"      not preselected: {'; '.join(row['failures'])}")
    return 0


def run_decide(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.curation import CurationRules, decide
    from napari_mrisynth.turing.store import RatingStore

    rules = CurationRules.parse(args.rules) if getattr(args, "rules", None) else None
    with RatingStore(args.db, key=args.key) as store:
        for volume_id in args.volumes:
            row = decide(store, volume_id, args.decision, curator=args.curator,
                         reason=args.reason, override=getattr(args, "override", False),
                         rules=rules, study_id=args.study)  # fmt: skip
            note = f" OVERRIDING: {'; '.join(row['failures'])}" if row["override"] else ""
            print(f"{volume_id}: {args.decision} by {args.curator}{note}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.curation import CurationRules, apply_rules

    rules = CurationRules.parse(args.rules)
    for row in apply_rules(args.db, rules, curator=args.curator, key=args.key,
                           study_id=args.study, redecide=args.redecide):  # fmt: skip
        print(f"{row['volume_id']}: {row['decision']} ({row['reason']})")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from napari_mrisynth.turing.curation import audit_study

    with ProgressBar("auditing") as progress:
        rows = audit_study(args.db, args.train, key=args.key, study_id=args.study,
                           progress=progress)  # fmt: skip
    for row in rows:
        flag = "FLAGGED as a possible copy" if row["flagged"] else "not a copy"
        print(
            f"{row['volume_id']}: nearest {row['nearest']} similarity "
            f"{row['similarity']:.3f} (threshold {row['threshold']:.3f}): {flag}"
        )
    return 0
