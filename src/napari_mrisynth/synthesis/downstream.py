"""Does a synthetic set help a small-data model? ``mrisynth evaluate downstream``.

The protocol (docs/downstream.md) in short. For each repeat, subjects are split per
diagnosis, seeded: a held-out real **test** set, a real **validation** set (early stopping),
and a pool from which the **training** set of each size is taken (the first ``size`` of
each class, so smaller sets are nested in larger ones). For each repeat and size:

1. an anatomy-first generator is fitted on that training set only (never on a validation or
   test subject) and saved beside the results with its card;
2. it samples ``synthetic_per_class`` heads of each diagnosis, with their label maps
   (optionally only those the memorization audit does not flag);
3. the same network is trained in every **arm** with the same initial weights, the same
   step budget and the same early stopping (:mod:`napari_mrisynth.training.budget`): real
   only; real with the project's classical MONAI augmentation; real with the synthetic set;
   real with both; the synthetic set only;
4. each arm is scored on the held-out real test subjects: AUC (classification) or mean Dice
   over the brain labels (segmentation).

Every arm's result is a JSON file written when it finishes, so a killed run continues at the
next unfinished arm; the protocol is written first and a run with another protocol refuses
the folder. The report pairs the arms within each repeat
(:mod:`napari_mrisynth.reports.downstream`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.io.atomic import write_json, write_text
from napari_mrisynth.training.budget import TASKS, Budget

ARMS = ("real", "real+classical", "real+synthetic", "real+classical+synthetic", "synthetic")

#: Paired differences reported, first minus second; the first is the primary endpoint.
CONTRASTS = (
    ("real+synthetic", "real+classical"),
    ("real+synthetic", "real"),
    ("real+classical+synthetic", "real+classical"),
    ("real+classical", "real"),
    ("synthetic", "real"),
)

#: The gain in held-out AUC the primary endpoint asks of real+synthetic over
#: real+classical at 10 subjects per class.
TARGET_GAIN = 0.03

_CLASSES = ("control", "bvFTD")  # class ids 0 and 1, as the bundled classifier's outputs
_CONDITION = {"control": "control", "bvFTD": "bvftd"}


@dataclass(frozen=True)
class Protocol:
    """Everything a downstream evaluation is fixed by; written to ``protocol.json`` first.

    Parameters
    ----------
    tasks : tuple of str
        "classification" (bvFTD vs control) and/or "segmentation" (the cohort's labels).
    sizes : tuple of int
        Real training subjects per class.
    repeats : int
    test_per_class, val_per_class : int
        Held-out real test and validation subjects per class and repeat.
    synthetic_per_class : int
        Synthetic heads sampled per class for the synthetic arms.
    spacing : float
        Model grid (mm) of the generator and the networks.
    curate : bool
        Keep only the synthetic heads the memorization audit does not flag.
    arms : tuple of str
    seed : int
    budget : Budget
    resamples : int
        Bootstrap resamples of the report.
    generator : dict
        :class:`~napari_mrisynth.synthesis.anatomy_template.AnatomyOptions` fields other
        than the shape model (always Gaussian here), e.g. coarser registration for tests.
    """

    tasks: tuple[str, ...] = TASKS
    sizes: tuple[int, ...] = (6, 10, 16)
    repeats: int = 10
    test_per_class: int = 10
    val_per_class: int = 4
    synthetic_per_class: int = 20
    spacing: float = 4.0
    curate: bool = False
    arms: tuple[str, ...] = ARMS
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    resamples: int = 10000
    generator: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS] + [a for a in self.arms if a not in ARMS]
        if bad or not self.tasks or not self.arms:
            raise MrisynthError(
                f"downstream protocol: unknown or missing tasks/arms {bad}; "
                f"tasks are {', '.join(TASKS)}, arms {', '.join(ARMS)}"
            )
        if min(self.sizes, default=0) < 2 or self.repeats < 1 or self.synthetic_per_class < 1:
            raise MrisynthError("downstream protocol: sizes of at least 2 per class, at least "
                                "one repeat and one synthetic head per class")  # fmt: skip
        if self.test_per_class < 1 or self.val_per_class < 1:
            raise MrisynthError("downstream protocol: at least one test and one validation "
                                "subject per class")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["budget"] = self.budget.to_json()
        return json.loads(json.dumps(data))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Protocol:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                  if k in known}  # fmt: skip
        values["budget"] = Budget(**data.get("budget", {}))
        return cls(**values)


# -- splits ----------------------------------------------------------------------------------
def repeat_split(participants: Sequence[dict[str, str]], protocol: Protocol,
                 repeat: int) -> dict[str, Any]:  # fmt: skip
    """Test, validation and pool subjects of one repeat, per diagnosis.

    Each class is shuffled with ``(seed, repeat, class)``: the first ``test_per_class`` are
    the test set, the next ``val_per_class`` the validation set, the rest the pool in order.
    """
    result: dict[str, Any] = {"test": [], "val": [], "pool": {}}
    for index, name in enumerate(_CLASSES):
        ids = sorted(r["participant_id"] for r in participants if r.get("diagnosis") == name)
        order = [ids[i] for i in np.random.default_rng([protocol.seed, repeat, index])
                 .permutation(len(ids))]  # fmt: skip
        t, v = protocol.test_per_class, protocol.val_per_class
        result["test"] += order[:t]
        result["val"] += order[t : t + v]
        result["pool"][name] = order[t + v :]
    result["test"], result["val"] = sorted(result["test"]), sorted(result["val"])
    return result


def training_subjects(split: dict[str, Any], size: int) -> list[str]:
    """The first ``size`` pool subjects of each class (nested across sizes)."""
    return sorted(s for name in _CLASSES for s in split["pool"][name][:size])


def check_cohort(participants: Sequence[dict[str, str]], protocol: Protocol, cohort: Path) -> None:
    """Raise when a class has too few subjects for the protocol's splits."""
    needed = protocol.test_per_class + protocol.val_per_class + max(protocol.sizes)
    for name in _CLASSES:
        have = sum(r.get("diagnosis") == name for r in participants)
        if have < needed:
            raise MrisynthError(
                f"{cohort / 'participants.tsv'}: {have} {name} subjects, the protocol needs "
                f"{needed} ({protocol.test_per_class} test + {protocol.val_per_class} "
                f"validation + {max(protocol.sizes)} training)"
            )


# -- files -------------------------------------------------------------------------------------
def _write_json(data: Any, path: Path) -> None:
    write_json(path, data, indent=1)


def _participants_digest(cohort: Path) -> str:
    return hashlib.sha256((cohort / "participants.tsv").read_bytes()).hexdigest()[:16]


#: What a run may choose without changing any result: a later run in the same folder may ask
#: for more repeats, sizes, tasks or arms and reuses every unit already done.
SELECTION = ("tasks", "sizes", "repeats", "arms")


def start_folder(out: Path, cohort: Path, protocol: Protocol) -> None:
    """Write ``protocol.json`` into a new ``out``, or check that ``out`` holds the same
    design on the same cohort (a resumed or extended run) and add this run's selection."""
    path = out / "protocol.json"
    design = {k: v for k, v in protocol.to_json().items() if k not in SELECTION}
    mine = {"design": design, "cohort": str(cohort.resolve()),
            "participants_sha256": _participants_digest(cohort)}  # fmt: skip
    selection = {k: protocol.to_json()[k] for k in SELECTION}
    if path.exists():
        theirs = json.loads(path.read_text(encoding="utf-8"))
        # fields added since that run was written take their defaults
        saved = Protocol.from_json({**theirs["design"], **selection}).to_json()
        differ = sorted(
            [k for k in design if design[k] != saved[k]]
            + [k for k in ("cohort", "participants_sha256") if mine[k] != theirs.get(k)]
        )
        if differ:
            raise MrisynthError(f"{path}: this folder holds another protocol or cohort (differs "
                                f"in {', '.join(differ)}); use a new --out")  # fmt: skip
        if theirs["selections"][-1] != selection:
            theirs["selections"].append(selection)
            _write_json(theirs, path)
        return
    _write_json({**mine, "selections": [selection]}, path)


def saved_protocol(out: Path) -> Protocol:
    """The protocol of ``out``: its design with the latest run's selection."""
    return saved_selections(out)[-1]


def saved_selections(out: Path) -> list[Protocol]:
    """The protocol of every run ``out`` has seen: its design with each run's selection."""
    return _selections(json.loads((out / "protocol.json").read_text(encoding="utf-8")))


def _selections(saved: dict[str, Any]) -> list[Protocol]:
    return [Protocol.from_json({**saved["design"], **selection})
            for selection in saved["selections"]]  # fmt: skip


def unit_folder(out: Path, repeat: int, size: int) -> Path:
    return out / f"r{repeat:02d}-n{size:02d}"


def wanted_runs(protocol: Protocol) -> list[tuple[str, str, int, int]]:
    """(task, arm, repeat, size) of every arm run the protocol's selection asks for."""
    return [(t, a, r, n) for r in range(protocol.repeats) for n in protocol.sizes
            for t in protocol.tasks for a in protocol.arms]  # fmt: skip


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every finished arm's record under ``out``."""
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(out.glob("r*-n*/*/*.json")) if p.parent.name in TASKS]  # fmt: skip


# -- the generator and its synthetic set ----------------------------------------------------
def _generator(cohort: Path, subjects: list[str], diagnosis: dict[str, str], folder: Path,
               protocol: Protocol, cache: Path, name: str) -> Any:  # fmt: skip
    """The unit's anatomy-first generator, fitted on ``subjects`` only (or read back)."""
    import torch

    from napari_mrisynth.models.card import ModelCard, read_card
    from napari_mrisynth.models.conditions import DIAGNOSIS_CLASSES, Condition
    from napari_mrisynth.models.saving import save_model
    from napari_mrisynth.synthesis.anatomy import fit_anatomy_first
    from napari_mrisynth.synthesis.anatomy_template import AnatomyOptions
    from napari_mrisynth.synthesis.train import anatomy_inference, anatomy_spec, cached_arrays
    from napari_mrisynth.training.data import cache_subjects

    saved = folder / "generator" / f"{name}-1.0.0"
    if (saved / "card.json").exists():
        return read_card(saved)
    spec = anatomy_spec(protocol.spacing)
    items = cache_subjects(cohort, subjects, spec, cache, labels=True)
    conditions = [Condition.parse(_CONDITION[diagnosis[s]]) for s in subjects]
    options = AnatomyOptions(**{**protocol.generator, "shape_model": "gaussian"})
    fitted = fit_anatomy_first(cached_arrays(items, "image"), cached_arrays(items, "label"),
                               conditions, protocol.spacing, options)  # fmt: skip
    card = ModelCard(
        id=name, version="1.0.0", task="generation",
        title=f"anatomy-first bvFTD/control T1, {protocol.spacing:g} mm (downstream unit)",
        description=(f"Fitted by mrisynth evaluate downstream on {len(subjects)} training "
                     f"subjects of {cohort.name} only ({folder.name})."),
        architecture={"name": "AnatomyFirst", "args": fitted.args},
        labels=list(DIAGNOSIS_CLASSES), input=spec, inference=anatomy_inference(("diagnosis",)),
        training={"data": str(cohort.resolve()), "splits": {"train": subjects},
                  "options": asdict(options), "fit": fitted.report},
    )  # fmt: skip
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fitted.buffers.items()}
    return save_model(card, state, folder / "generator", overwrite=True)


def _synthetic_cohort(card: Any, folder: Path, protocol: Protocol, unit_seed: int,
                      device: Any) -> Path:  # fmt: skip
    """``folder/synthetic``: the sampled heads as a cohort (``participants.tsv`` last)."""
    from napari_mrisynth.io.files import save_volume
    from napari_mrisynth.synthesis.generate import generate

    root = folder / "synthetic"
    if (root / "participants.tsv").exists():
        return root
    rows = []
    for index, name in enumerate(_CLASSES):
        made = generate(card, protocol.synthetic_per_class, condition=_CONDITION[name],
                        seed=unit_seed * 2 + index, device=device)  # fmt: skip
        for k, item in enumerate(made):
            subject = f"sub-syn{name.lower()}{k:03d}"
            anat = root / subject / "anat"
            save_volume(item.volume, anat / f"{subject}_T1w.nii.gz")
            save_volume(item.labels, anat / f"{subject}_labels.nii.gz")
            _write_json(item.provenance, anat / f"{subject}_T1w.json")
            rows.append({"participant_id": subject, "diagnosis": name})
    _write_table(rows, root / "participants.tsv")
    return root


def _write_table(rows: list[dict[str, str]], path: Path) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), delimiter="\t")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, table.getvalue())


def _curated(synthetic: Path, cohort: Path, train: list[str], folder: Path,
             device: Any) -> dict[str, Any]:  # fmt: skip
    """The memorization audit of the synthetic heads against the generator's training
    scans; ``kept`` lists the heads it does not flag."""
    from napari_mrisynth.evaluation import audit_memorization
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.training.data import subject_image
    from napari_mrisynth.training.splits import read_participants

    path = folder / "curation.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    ids = [r["participant_id"] for r in read_participants(synthetic)]
    real = [load_volume(subject_image(cohort, s)).compute() for s in train]
    made = [load_volume(subject_image(synthetic, s)).compute() for s in ids]
    report = audit_memorization(real, made, device=device)
    flagged = {ids[i] for i, e in enumerate(report.entries) if e["flagged"]}
    result = {"threshold": float(report.threshold), "flagged": sorted(flagged),
              "kept": [s for s in ids if s not in flagged],
              "max_similarity": max(float(e["similarity"]) for e in report.entries)}  # fmt: skip
    _write_json(result, path)
    return result


# -- one arm -------------------------------------------------------------------------------------
def _task_spec(task: str, spacing: float) -> Any:
    from napari_mrisynth.training.recipe import model_spec

    return model_spec(spacing, brain_mask=task == "classification")


def _log_arm(record: dict[str, Any], tracking: dict[str, Any]) -> str:
    from napari_mrisynth.models import tracking as mlflow_tracking

    score = record["test"].get("auc", record["test"].get("dice"))
    client, run_id = mlflow_tracking.start_run(
        tracking.get("uri"), tracking.get("experiment", "downstream"),
        f"{record['task']} {record['arm']} r{record['repeat']:02d} n{record['size']:02d}",
        {"mrisynth.report": "downstream", "downstream.out": tracking["out"]},
    )  # fmt: skip
    mlflow_tracking.log_params(client, run_id, {
        k: record[k] for k in ("task", "arm", "repeat", "size", "n_real", "n_synthetic",
                               "augment", "seed")
    } | {"generator": record.get("generator") or ""})  # fmt: skip
    metrics = {f"test_{'auc' if 'auc' in record['test'] else 'dice'}": float(score),
               "steps": float(record["fit"]["steps"])}  # fmt: skip
    if record["fit"]["best_score"] is not None:
        metrics["best_validation"] = float(record["fit"]["best_score"])
    mlflow_tracking.log_metrics(client, run_id, metrics)
    client.set_terminated(run_id)
    return run_id


def _run_arm(
    task: str,
    arm: str,
    items: dict[str, list[Any]],
    classes: dict[str, int],
    protocol: Protocol,
    seed: int,
    accelerator: str,
    device: Any,
) -> dict[str, Any]:
    from napari_mrisynth.training.budget import fit_within_budget, score_classifier, score_segmenter

    train = ([] if arm == "synthetic" else items["real"]) + (
        items["synthetic"] if "synthetic" in arm else [])  # fmt: skip
    fit = fit_within_budget(task, train, items["val"], budget=protocol.budget, seed=seed,
                            augment="classical" in arm, classes=classes,
                            accelerator=accelerator)  # fmt: skip
    test = (score_classifier(fit, items["test"], classes, device) if task == "classification"
            else score_segmenter(fit, items["test"], protocol.budget, device))  # fmt: skip
    return {
        "fit": {"steps": fit.steps, "best_step": fit.best_step, "best_score": fit.best_score,
                "history": fit.history, "seconds": fit.seconds},
        "test": test,
        "n_real": 0 if arm == "synthetic" else len(items["real"]),
        "n_synthetic": len(items["synthetic"]) if "synthetic" in arm else 0,
        "augment": "classical" in arm,
        "subjects": {"train": [c.subject for c in train]},
    }  # fmt: skip


def _unit_synthetic(
    cohort: Path, folder: Path, protocol: Protocol, repeat: int, size: int, train: list[str],
    diagnosis: dict[str, str], device: Any, stage: Callable[[str], None] | None,
) -> tuple[Any, Path, list[str]]:  # fmt: skip
    """The unit's generator, its synthetic cohort and the heads the arms may use (all of
    them, or those curation keeps); adds the heads' diagnoses to ``diagnosis``."""
    from napari_mrisynth.training.splits import read_participants

    name = f"anatomy-downstream-r{repeat:02d}-n{size:02d}"
    if stage is not None:
        stage(f"r{repeat:02d} n{size:02d}: generator")
    card = _generator(cohort, train, diagnosis, folder, protocol, folder.parent / "cache", name)
    if stage is not None:
        stage(f"r{repeat:02d} n{size:02d}: synthetic heads")
    unit_seed = protocol.seed * 10007 + repeat * 101 + size
    synthetic = _synthetic_cohort(card, folder, protocol, unit_seed, device)
    made = read_participants(synthetic)
    ids = [r["participant_id"] for r in made]
    diagnosis.update({r["participant_id"]: r["diagnosis"] for r in made})
    if protocol.curate:
        ids = _curated(synthetic, cohort, train, folder, device)["kept"]
        left = {diagnosis[s] for s in ids}
        if left != set(_CLASSES):
            raise MrisynthError(
                f"{folder / 'curation.json'}: the memorization audit flagged every synthetic "
                f"head of {', '.join(sorted(set(_CLASSES) - left))}; nothing is left to train "
                "the synthetic arms on"
            )
    return card, synthetic, ids


def _task_items(task: str, cohort: Path, unit: dict[str, Any], synthetic: Path | None,
                synthetic_ids: list[str], out: Path, folder: Path,
                spacing: float) -> dict[str, list[Any]]:  # fmt: skip
    """The unit's real training, validation and test subjects and its synthetic heads,
    brought onto ``task``'s model grid (cached)."""
    from napari_mrisynth.training.data import cache_subjects

    spec = _task_spec(task, spacing)
    labels = True if task == "segmentation" else None
    items = {key: cache_subjects(cohort, unit[key], spec, out / "cache", labels=labels)
             for key in ("train", "val", "test")}  # fmt: skip
    items["real"] = items.pop("train")
    items["synthetic"] = (
        cache_subjects(synthetic, synthetic_ids, spec, folder / "cache", labels=labels)
        if synthetic is not None else []
    )  # fmt: skip
    return items


# -- the run -------------------------------------------------------------------------------------
def run_downstream(
    cohort: str | Path,
    out: str | Path,
    protocol: Protocol | None = None,
    *,
    device: Any = None,
    tracking: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a downstream evaluation and return its report.

    Parameters
    ----------
    cohort : path
        A cohort folder with ``participants.tsv`` (``diagnosis`` control / bvFTD), T1 images
        and label maps, e.g. from ``mrisynth cohort``.
    out : path
        Results: ``protocol.json``, a folder per repeat and size (splits, the generator, the
        synthetic heads, one JSON per task and arm), ``report.json``, ``report.md`` and
        ``scores.png``.
    protocol : Protocol, optional
    device : torch.device, optional
        Where the networks are scored and the generator samples; training uses Lightning's
        accelerator for the same kind of device.
    tracking : dict, optional
        ``{"uri", "experiment"}``: log every arm as an MLflow run (and the report).
    progress : callable(done, total), optional
        Arms done out of all arms.
    stage : callable(str), optional
        Told what runs now ("r03 n10: generator"...).

    Returns
    -------
    dict
        The report (see :func:`report`).
    """
    from napari_mrisynth.training.splits import read_participants

    protocol = protocol or Protocol()
    cohort, out = Path(cohort), Path(out)
    participants = read_participants(cohort)
    check_cohort(participants, protocol, cohort)
    diagnosis = {r["participant_id"]: r["diagnosis"] for r in participants}
    out.mkdir(parents=True, exist_ok=True)
    start_folder(out, cohort, protocol)
    device_type = getattr(device, "type", str(device or "cpu"))
    accelerator = {"cuda": "gpu", "mps": "mps"}.get(device_type, "cpu")
    total = len(wanted_runs(protocol))
    done = sum((unit_folder(out, r, n) / t / f"{a}.json").exists()
               for t, a, r, n in wanted_runs(protocol))  # fmt: skip
    if progress is not None:
        progress(done, total)
    for repeat in range(protocol.repeats):
        split = repeat_split(participants, protocol, repeat)
        for size in protocol.sizes:
            folder = unit_folder(out, repeat, size)
            train = training_subjects(split, size)
            unit = {"repeat": repeat, "size": size, "test": split["test"], "val": split["val"],
                    "train": train, "generator_train": train}  # fmt: skip
            if set(unit["test"]) & (set(train) | set(unit["val"])):
                raise MrisynthError(f"{folder}: a test subject is also a training or "
                                    "validation subject")  # fmt: skip
            if not (folder / "splits.json").exists():
                _write_json(unit, folder / "splits.json")
            pending = [(t, a) for t in protocol.tasks for a in protocol.arms
                       if not (folder / t / f"{a}.json").exists()]  # fmt: skip
            if not pending:
                continue
            card, synthetic, synthetic_ids = None, None, []
            if any("synthetic" in a for _, a in pending):
                card, synthetic, synthetic_ids = _unit_synthetic(
                    cohort, folder, protocol, repeat, size, train, diagnosis, device, stage
                )
            for task in protocol.tasks:
                arms = [a for t, a in pending if t == task]
                if not arms:
                    continue
                items = _task_items(task, cohort, unit, synthetic, synthetic_ids, out, folder,
                                    protocol.spacing)  # fmt: skip
                classes = {s: _CLASSES.index(d) for s, d in diagnosis.items()}
                for arm in arms:
                    if stage is not None:
                        stage(f"r{repeat:02d} n{size:02d}: {task} {arm}")
                    seed = protocol.seed * 1009 + repeat  # the same initial network in every arm
                    record = {"task": task, "arm": arm, "repeat": repeat, "size": size,
                              "seed": seed,
                              "generator": card.ref if card and "synthetic" in arm else None,
                              **_run_arm(task, arm, items, classes, protocol, seed, accelerator,
                                         device)}  # fmt: skip
                    if tracking is not None:
                        record["mlflow_run"] = _log_arm(record, {**tracking, "out": str(out)})
                    _write_json(record, folder / task / f"{arm}.json")
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return report(out, tracking=tracking)


def disjointness(out: Path) -> dict[str, Any]:
    """Check every unit: no test subject trained a network or the generator, and no
    validation subject trained either. The generator's training subjects are read from its
    own card (what it was fitted on), the networks' from each arm's record."""
    from napari_mrisynth.models.card import read_card

    units = sorted(out.glob("r*-n*/splits.json"))
    bad = []
    for path in units:
        unit = json.loads(path.read_text(encoding="utf-8"))
        test, val = set(unit["test"]), set(unit["val"])
        trained = set(unit["train"]) | set(unit["generator_train"])
        for card in path.parent.glob("generator/*/card.json"):
            trained |= set(read_card(card.parent).training["splits"]["train"])
        for arm in path.parent.glob("*/*.json"):
            if arm.parent.name in TASKS:
                record = json.loads(arm.read_text(encoding="utf-8"))
                trained |= set(record["subjects"]["train"])
                if {s["id"] for s in record["test"]["subjects"]} != set(unit["test"]):
                    bad.append(f"{path.parent.name}/{arm.parent.name}/{arm.name}")
        if test & (trained | val) or val & trained:
            bad.append(path.parent.name)
    return {"units": len(units), "disjoint": not bad, "violations": bad}


def report(out: str | Path, *, tracking: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summarize what ``out`` holds (finished or not) into ``report.json``, ``report.md``
    and ``scores.png``; log it to MLflow when ``tracking`` is given."""
    from napari_mrisynth.reports.downstream import markdown, plot_scores, summarize

    out = Path(out)
    saved = json.loads((out / "protocol.json").read_text(encoding="utf-8"))
    # every run the folder has seen: a later run that adds a task or a size does not hide
    # the results of the earlier ones
    selections = _selections(saved)
    protocol = selections[-1]
    wanted = set().union(*(wanted_runs(p) for p in selections))
    arms = tuple(a for a in ARMS if any(a in p.arms for p in selections))
    primary = {"task": "classification", "size": 10, "contrast": CONTRASTS[0],
               "gain": TARGET_GAIN}  # fmt: skip
    records = [r for r in read_records(out)
               if (r["task"], r["arm"], r["repeat"], r["size"]) in wanted]  # fmt: skip
    summary = summarize(records, contrasts=CONTRASTS, primary=primary,
                        resamples=protocol.resamples, seed=protocol.seed)  # fmt: skip
    result = {
        "cohort": saved["cohort"], "protocol": protocol.to_json(),
        "selections": saved["selections"],
        "arms_done": len(records), "arms_expected": len(wanted),
        "complete": len(records) == len(wanted),
        "splits": disjointness(out), **summary,
    }  # fmt: skip
    _write_json(result, out / "report.json")
    text = markdown(summary, arms)
    head = (f"Cohort {saved['cohort']}; {len(records)} of {len(wanted)} arm runs done; test "
            f"sets disjoint from every network's and generator's training subjects: "
            f"{'yes' if result['splits']['disjoint'] else 'NO'} "
            f"({result['splits']['units']} units).\n\n")  # fmt: skip
    write_text(out / "report.md", head + text)
    if summary["results"]:
        plot_scores(summary, arms, out / "scores.png")
    if tracking is not None:
        from napari_mrisynth.models import tracking as mlflow_tracking

        client, run_id = mlflow_tracking.start_run(
            tracking.get("uri"), tracking.get("experiment", "downstream"), "downstream report",
            {"mrisynth.report": "downstream-summary", "downstream.out": str(out)},
        )  # fmt: skip
        for name in ("report.json", "report.md", "scores.png", "protocol.json"):
            if (out / name).exists():
                client.log_artifact(run_id, str(out / name))
        client.set_terminated(run_id)
        result["mlflow_run"] = run_id
    return result
