"""Scoring numeric completions the way the course's tester does: parse the price a model answered, then the
average absolute error, the root mean squared log error, and the share of hits (within $40 or 20% of the truth).

An answer with no number in it is a miss: it is counted (`unparsable`) and left out of the error averages, rather
than scored as $0 the way the course's notebook does, so a model that stops answering cannot hide in the mean.
Pure Python: no torch, so the API can use it too.
"""

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
HIT_DOLLARS, HIT_SHARE = 40.0, 0.2  # the course's "green"
NEAR_DOLLARS, NEAR_SHARE = 80.0, 0.4  # its "orange"


def parse_number(completion: str) -> float | None:
    """The first number in a completion (`1,299.99`, `$45`, `about 45.5`), or None when there is none."""
    match = NUMBER.search(completion)
    if match is None:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


def grade(truth: float, guess: float | None) -> str:
    """`hit` (green: within $40 or 20%), `near` (orange: within $80 or 40%), or `miss` (red, or no answer)."""
    if guess is None:
        return "miss"
    error = abs(guess - truth)
    share = error / truth if truth else math.inf
    if error < HIT_DOLLARS or share < HIT_SHARE:
        return "hit"
    if error < NEAR_DOLLARS or share < NEAR_SHARE:
        return "near"
    return "miss"


@dataclass(frozen=True)
class NumericScore:
    """The course's figures over a set of answers."""

    rows: int
    mae: float | None
    rmsle: float | None
    hit_rate: float
    near_rate: float
    unparsable: int

    def as_dict(self) -> dict[str, Any]:
        """The figures as stored on a job."""
        return asdict(self)


def score_numeric(pairs: Iterable[tuple[float, float | None]]) -> NumericScore:
    """Score (truth, guess) pairs; a None guess is unparsable: a miss, outside the error averages."""
    pairs = list(pairs)
    answered = [(truth, guess) for truth, guess in pairs if guess is not None]
    grades = [grade(truth, guess) for truth, guess in pairs]
    mae = sum(abs(guess - truth) for truth, guess in answered) / len(answered) if answered else None
    # log1p of a negative guess below -1 is undefined: clamp at 0 as a price cannot be negative.
    sle = [(math.log1p(truth) - math.log1p(max(guess, 0.0))) ** 2 for truth, guess in answered]
    rmsle = math.sqrt(sum(sle) / len(sle)) if sle else None
    total = len(pairs)
    return NumericScore(
        rows=total,
        mae=mae,
        rmsle=rmsle,
        hit_rate=grades.count("hit") / total if total else 0.0,
        near_rate=grades.count("near") / total if total else 0.0,
        unparsable=total - len(answered),
    )
