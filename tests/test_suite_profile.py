"""bench/suite_profile.py charges each py-spy sample to the process that was sampled, and imports apart."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# Three samples in py-spy's raw form: a trainer (started as a spare) importing, the same trainer stepping under the
# Celery worker that started it, and a training step run by pytest itself (its command line left empty).
RAW = """\
process 10:"python -m celery worker";main (celery/__main__.py:1);process 11:"python -m worker.runner --spare";\
<module> (worker/runner.py:1);_find_and_load (<frozen importlib._bootstrap>:1);<module> (torch/__init__.py:1) 30
process 10:"python -m celery worker";main (celery/__main__.py:1);process 11:"python -m worker.runner --spare";\
train (/repo/worker/training.py:9);training_step (/repo/worker/training.py:95);backward (torch/_tensor.py:3) 10
process 1:"";test_step (tests/test_x.py:4);train (worker/training.py:9) 4
"""


def test_samples_are_charged_to_the_sampled_process_with_imports_apart(tmp_path: Path) -> None:
    raw = tmp_path / "suite.raw"
    raw.write_text(RAW)
    out = tmp_path / "profile.json"

    subprocess.run(
        [sys.executable, str(REPO / "bench" / "suite_profile.py"), str(raw), "--rate", "10", "--out", str(out)],
        check=True,
        capture_output=True,
    )

    result = json.loads(out.read_text())
    assert result["cpu_s"] == 4.4
    assert result["kinds"] == {"trainer (cold or spare)": 4.0, "pytest": 0.4}
    assert [3.0, "trainer (cold or spare)", "import"] in result["charged"]
    assert [1.0, "trainer (cold or spare)", "training_step worker/training.py"] in result["charged"]
    assert [0.4, "pytest", "train worker/training.py"] in result["charged"]
