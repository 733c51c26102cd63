"""An evaluation job's progress: answers generated, reported at most once per interval, and a cancel or drain
stops the generation."""

from typing import Any

import pytest

from worker.evaluation_job import EvaluationProgress, EvaluationStopped


class Directives:
    """A reporter that answers each progress report with the next directive and keeps what it was sent."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    def progress(self, progress: dict[str, Any]) -> str:
        self.sent.append(progress)
        return self.answers.pop(0) if self.answers else "continue"

    def __getattr__(self, name: str) -> Any:  # the rest of the Reporter protocol is not used here
        raise AttributeError(name)


def test_answers_are_reported_once_per_interval_and_always_at_the_end() -> None:
    reporter = Directives()
    progress = EvaluationProgress(reporter, total=12, interval_s=3600)

    for done in (4, 8, 12):
        progress(done)

    assert [sent["step"] for sent in reporter.sent] == [4, 12], "the first batch, then nothing until the last"
    assert reporter.sent[-1]["total_steps"] == 12 and reporter.sent[-1]["eta_seconds"] == 0


@pytest.mark.parametrize(("directive", "drained"), [("stop", False), ("drain", True)])
def test_a_cancel_or_a_drain_stops_the_generation(directive: str, drained: bool) -> None:
    progress = EvaluationProgress(Directives("continue", directive), total=12, interval_s=0)
    progress(4)

    with pytest.raises(EvaluationStopped) as stopped:
        progress(8)

    assert stopped.value.drained is drained
    assert progress.progress["step"] == 8
