"""What a generator is asked for: diagnosis, and optionally age and sex, as one vector.

Every family sees the same encoding, recorded in its card, so a condition means the same
thing to a VAE, a GAN and a latent diffusion model::

    [diagnosis, age, sex] = [+1 bvFTD / -1 control, (age - 65) / 10, +1 male / -1 female]

An unknown (or unconditioned) entry is 0, which is also the "null" condition that
classifier-free guidance contrasts with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.models.card import LabelSpec

#: The diagnoses a classifier tells apart and a generator is asked for: its card's labels,
#: in output order, with their colours.
DIAGNOSIS_CLASSES = (LabelSpec(0, "control", (60, 160, 230)), LabelSpec(1, "bvFTD", (220, 20, 10)))

#: Vector entries, in order.
CONDITION_NAMES = ("diagnosis", "age", "sex")
AGE_MEAN = 65.0
AGE_SCALE = 10.0
DIAGNOSES = {"bvftd": ("bvFTD", 1.0), "control": ("control", -1.0)}
SEXES = {"m": 1.0, "male": 1.0, "f": -1.0, "female": -1.0}


class ConditionError(MrisynthError):
    """A condition a generator cannot take (unknown diagnosis, impossible age, ...)."""


def encoding() -> dict[str, Any]:
    """The encoding as the card records it."""
    return {
        "vector": list(CONDITION_NAMES),
        "diagnosis": {"bvFTD": 1.0, "control": -1.0, "unknown": 0.0},
        "age": {"mean": AGE_MEAN, "scale": AGE_SCALE, "unknown": 0.0},
        "sex": {"M": 1.0, "F": -1.0, "unknown": 0.0},
    }


@dataclass(frozen=True)
class Condition:
    """One generation request's condition.

    Parameters
    ----------
    diagnosis : {"bvFTD", "control"}
    age : float, optional
        Years; None leaves it to the model.
    sex : {"F", "M"}, optional
    """

    diagnosis: str
    age: float | None = None
    sex: str | None = None

    @classmethod
    def parse(cls, diagnosis: str, age: float | None = None, sex: str | None = None) -> Condition:
        """Accept ``bvftd``/``bvFTD``/``control`` and ``F``/``M``/``female``/``male``."""
        key = str(diagnosis).strip().lower()
        if key not in DIAGNOSES:
            raise ConditionError(f"condition {diagnosis!r}: use bvftd or control")
        if age is not None and not 18.0 <= float(age) <= 100.0:
            raise ConditionError(f"age {age}: give years between 18 and 100")
        sex_key = None if sex is None else str(sex).strip().lower()
        if sex_key is not None and sex_key not in SEXES:
            raise ConditionError(f"sex {sex!r}: use F or M")
        return cls(
            DIAGNOSES[key][0],
            None if age is None else float(age),
            None if sex_key is None else ("M" if SEXES[sex_key] > 0 else "F"),
        )

    @classmethod
    def from_participant(cls, row: dict[str, str], used: tuple[str, ...]) -> Condition:
        """A cohort's participants.tsv row, keeping only the ``used`` conditions."""
        age = row.get("age") if "age" in used else None
        sex = row.get("sex") if "sex" in used else None
        return cls.parse(row["diagnosis"], float(age) if age else None, sex or None)

    def vector(self) -> list[float]:
        """``[diagnosis, age, sex]`` with 0 for what is not given."""
        diagnosis = DIAGNOSES[self.diagnosis.lower()][1]
        age = 0.0 if self.age is None else (self.age - AGE_MEAN) / AGE_SCALE
        sex = 0.0 if self.sex is None else SEXES[self.sex.lower()]
        return [diagnosis, age, sex]

    def to_json(self) -> dict[str, Any]:
        return {"diagnosis": self.diagnosis, "age": self.age, "sex": self.sex}

    @property
    def label(self) -> str:
        """Short text for file names: ``bvFTD``, ``control-F-70``."""
        parts = [self.diagnosis]
        if self.sex:
            parts.append(self.sex)
        if self.age is not None:
            parts.append(f"{self.age:g}")
        return "-".join(parts)
