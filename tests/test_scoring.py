"""The course's price metrics on hand-computed cases, and parsing of awkward answers."""

import math
from pathlib import Path

import pytest

from worker.scoring import grade, parse_number, score_numeric


@pytest.mark.parametrize(
    ("completion", "number"),
    [
        ("1299.99", 1299.99),
        ("1,299.99</s>", 1299.99),
        ("$45", 45.0),
        (" about 45.5 dollars", 45.5),
        (".99", 0.99),
        ("12.00\nPrice is $13", 12.0),
        ("no idea", None),
        ("", None),
    ],
)
def test_the_first_number_of_an_answer_is_its_price(completion: str, number: float | None) -> None:
    assert parse_number(completion) == number


@pytest.mark.parametrize(
    ("truth", "guess", "expected"),
    [
        (100.0, 139.0, "hit"),  # $39 off
        (500.0, 590.0, "hit"),  # $90 off but 18%
        (100.0, 179.0, "near"),  # $79 off
        (500.0, 690.0, "near"),  # 38%
        (100.0, 181.0, "miss"),
        (100.0, None, "miss"),
    ],
)
def test_answers_are_graded_like_the_course(truth: float, guess: float | None, expected: str) -> None:
    assert grade(truth, guess) == expected


def test_the_scores_match_a_hand_computation() -> None:
    pairs = [(100.0, 110.0), (200.0, 100.0), (50.0, None), (10.0, 10.0)]

    score = score_numeric(pairs)

    assert score.rows == 4 and score.unparsable == 1
    assert score.mae == pytest.approx((10 + 100 + 0) / 3)
    expected_rmsle = math.sqrt(((math.log(101) - math.log(111)) ** 2 + (math.log(201) - math.log(101)) ** 2 + 0.0) / 3)
    assert score.rmsle == pytest.approx(expected_rmsle)
    assert score.hit_rate == 0.5  # 110 vs 100, 10 vs 10; 200 vs 100 is a miss, and the unparsable one too
    assert score.near_rate == 0.0


def test_no_answers_at_all_score_no_error_and_no_hits() -> None:
    score = score_numeric([(10.0, None), (20.0, None)])

    assert (score.mae, score.rmsle, score.hit_rate, score.unparsable) == (None, None, 0.0, 2)


def test_the_charts_are_drawn_and_the_band_errors_follow_the_rows(tmp_path: Path) -> None:
    from worker.charts import draw_charts, mean_error_by_band

    rows = [
        {"truth": 20.0, "prediction": 30.0, "grade": "hit", "baseline_prediction": 60.0},
        {"truth": 40.0, "prediction": None, "grade": "miss", "baseline_prediction": 40.0},
        {"truth": 300.0, "prediction": 100.0, "grade": "miss", "baseline_prediction": None},
    ]

    paths = draw_charts(rows, tmp_path, baseline=True)

    assert [p.name for p in paths] == ["scatter.png", "error-by-band.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert mean_error_by_band(rows) == [10.0, None, None, 200.0, None]
    assert mean_error_by_band(rows, "baseline_prediction") == [20.0, None, None, None, None]
