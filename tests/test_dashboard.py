"""The web dashboard at `/`, driven in a real browser (Debian's Chromium through Playwright) against a real stack:
API, GPU worker and validation worker on SQLite and the local Redis, training a tiny model on the CPU."""

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect, sync_playwright

from api.main import create_app
from api.routes.dashboard import STATIC_DIR
from tests.conftest import user_of
from tests.services import StackClient, wait_for_end, wait_until

pytestmark = [pytest.mark.training, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"
VENDOR = STATIC_DIR / "vendor"
TRAINED_STEPS = 40
COUNT_POINTS = "() => Chart.getChart(document.getElementById('job-chart')).data.datasets[0].data.length"
# Points per model on the evaluation scatter (the fine-tune's come in one dataset per grade; the diagonal is neither).
COUNT_EVAL_POINTS = """() => {
  const counts = {};
  for (const set of Chart.getChart(document.getElementById('eval-scatter')).data.datasets)
    counts[set.model] = (counts[set.model] || 0) + set.data.length;
  return counts;
}"""
# Waits on the worker: validation and a ~10 s training child start; then the whole run (a tiny step takes 0.1-0.3 s
# on an idle 2-CPU box, over 1 s while other test suites share it).
UI_TIMEOUT_MS = 90_000
END_TIMEOUT_MS = 180_000


def job_spec(tiny_model: Path, train_file: Path, max_steps: int) -> dict[str, Any]:
    """The smallest job spec, logging every step."""
    hyperparameters = {"batch_size": 8, "max_length": 320, "max_steps": max_steps, "logging_steps": 1}
    return {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": hyperparameters}


def api_key(client: httpx.Client) -> str:
    """The raw API key a stack client sends."""
    return str(client.headers["Authorization"]).removeprefix("Bearer ")


@pytest.fixture(scope="module")
def dash_api(shared_stack: StackClient) -> Iterator[StackClient]:
    """The shared running stack on SQLite, as this module's user `e2e`."""
    with user_of(shared_stack, "e2e") as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for the whole module (Playwright never downloads a browser here)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, dash_api: StackClient) -> Iterator[Page]:
    """A fresh 1280x800 browser context on the stack's API; an uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=dash_api.stack.base_url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture(scope="module")
def trained_job(dash_api: StackClient, tiny_model: Path, train_file: Path) -> str:
    """A job of TRAINED_STEPS steps, submitted once for the module (it may still be running when handed out)."""
    created = dash_api.post("/jobs", json=job_spec(tiny_model, train_file, TRAINED_STEPS))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $FTQ_ARTIFACTS, or a pytest temporary directory."""
    directory = Path(os.environ["FTQ_ARTIFACTS"]) if os.environ.get("FTQ_ARTIFACTS") else None
    directory = directory or tmp_path_factory.mktemp("artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def sign_in(page: Page, key: str) -> None:
    """Open the dashboard and sign in through its form; the job list shows."""
    page.goto("/")
    page.fill("#api-key", key)
    page.click("#signin-button")
    expect(page.locator("#view-jobs")).to_be_visible()


def open_job(page: Page, key: str, job_id: str) -> None:
    """Sign in and open a job's page from the list."""
    sign_in(page, key)
    page.click(f'tr[data-job-id="{job_id}"]')
    expect(page).to_have_url(re.compile(f"#/jobs/{job_id}$"))
    expect(page.locator("#job-title")).to_have_text(job_id)


def chart_points(page: Page) -> int:
    """Points of the loss line on the job page's chart."""
    return int(page.evaluate(COUNT_POINTS))


def test_the_page_and_its_pinned_assets_are_served_without_a_key_and_kept_out_of_the_schema() -> None:
    client = TestClient(create_app())

    index = client.get("/")
    chart = client.get("/static/vendor/chart.js-4.6.1/chart.umd.min.js")
    schema = client.get("/openapi.json").json()

    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert 'id="signin-form"' in index.text
    assert chart.status_code == 200
    assert re.match(r"(text|application)/javascript", chart.headers["content-type"])
    assert re.match(r"(text|application)/javascript", client.get("/static/app.js").headers["content-type"])
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert "/" not in schema["paths"] and not any(path.startswith("/static") for path in schema["paths"])
    # Everything the page loads is local and exists: no CDN.
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', index.text):
        assert not re.match(r"(https?:)?//", ref), ref
        assert client.get(f"/{ref}").status_code == 200, ref


def test_the_vendored_files_match_the_sha256_recorded_in_the_vendor_readme() -> None:
    recorded = re.findall(r"^([0-9a-f]{64})  (\S+)$", (VENDOR / "README.md").read_text(), flags=re.MULTILINE)

    assert {name for _digest, name in recorded} >= {"chart.js-4.6.1/chart.umd.min.js", "chart.js-4.6.1/LICENSE.md"}
    for digest, name in recorded:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} changed"
    vendored = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file() and p.name != "README.md"}
    assert vendored == {name for _digest, name in recorded}, "every vendored file is recorded"


def test_signing_in_lists_a_submitted_job_with_its_status_and_owner_and_refreshes_it(
    page: Page, dash_api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    job_id = dash_api.post("/jobs", json=job_spec(tiny_model, train_file, 1)).json()["id"]

    sign_in(page, api_key(dash_api))
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".owner")).to_have_text("e2e")
    expect(row.locator(".status .badge")).to_have_text(re.compile("^(validating|queued|running)$"))
    expect(row.locator(".age")).to_have_text(re.compile(r"^\d+ s ago$"))
    expect(page.locator("#whoami")).to_have_text("e2e")

    # Cancelled through the API (which frees the worker for the next tests): the list refreshes by itself.
    assert dash_api.post(f"/jobs/{job_id}/cancel").status_code == 200
    expect(row.locator(".status .badge")).to_have_text(re.compile("^(cancelling|cancelled)$"))
    wait_for_end(dash_api, job_id, timeout_s=60)
    expect(row.locator(".status .badge")).to_have_text("cancelled")

    # The status filter asks the API for that status only.
    with page.expect_request(re.compile(r"/jobs\?.*status=succeeded")):
        page.select_option("#status-filter", "succeeded")
    expect(row).to_have_count(0)
    page.select_option("#status-filter", "cancelled")
    expect(row).to_be_visible()


def test_a_running_jobs_chart_grows_live_through_a_dropped_stream_and_ends_succeeded_at_the_last_step(
    page: Page, dash_api: StackClient, trained_job: str, artifacts: Path
) -> None:
    # The first connection to the event stream fails: the page reconnects, resuming after the last event it has.
    page.route(re.compile(r"/events/stream"), lambda route: route.abort(), times=1)
    stream_requests: list[dict[str, str]] = []
    page.on("request", lambda request: stream_requests.append(request.headers) if "/stream" in request.url else None)
    open_job(page, api_key(dash_api), trained_job)

    expect(page.locator("#job-status")).to_have_text("running", timeout=UI_TIMEOUT_MS)
    wait_until(lambda: chart_points(page) >= 1, timeout_s=60, what="the first chart point")
    first = chart_points(page)
    wait_until(lambda: chart_points(page) > first, timeout_s=60, what="the chart to grow")
    second = chart_points(page)
    # Both counts were read while training went on: fewer points than steps, and more the second time.
    assert first < second < TRAINED_STEPS
    page.screenshot(path=str(artifacts / "dashboard-job-running.png"), full_page=True)

    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=END_TIMEOUT_MS)
    expect(page.locator("#progress-step")).to_have_text(f"{TRAINED_STEPS} / {TRAINED_STEPS}")
    # One point per logged step: the resumed stream repeated nothing.
    wait_until(lambda: chart_points(page) == TRAINED_STEPS, timeout_s=10, what="a point per logged step")
    expect(page.locator("#cancel-button")).to_be_disabled()
    expect(page.locator("#event-log")).to_contain_text(f"step {TRAINED_STEPS}: loss")
    assert len(stream_requests) >= 2 and "last-event-id" in stream_requests[1]
    assert all("bearer " in headers["authorization"].lower() for headers in stream_requests)
    job = dash_api.get(f"/jobs/{trained_job}").json()
    assert job["status"] == "succeeded" and job["progress"]["step"] == TRAINED_STEPS


def test_cancelling_a_running_job_from_its_page_shows_it_cancelled(
    page: Page, dash_api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    job_id = dash_api.post("/jobs", json=job_spec(tiny_model, train_file, 5000)).json()["id"]
    open_job(page, api_key(dash_api), job_id)
    cancel = page.locator("#cancel-button")
    expect(page.locator("#job-status")).to_have_text("running", timeout=UI_TIMEOUT_MS)
    wait_until(lambda: chart_points(page) >= 1, timeout_s=60, what="training to start")

    cancel.click()

    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=30_000)
    expect(cancel).to_be_disabled()
    assert dash_api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_wrong_key_shows_the_apis_error_and_no_data(page: Page, dash_api: StackClient) -> None:
    wrong = "ftq_not-a-real-key-0123456789"
    expected = httpx.get(f"{dash_api.stack.base_url}/me", headers={"Authorization": f"Bearer {wrong}"})
    assert expected.status_code == 401

    page.goto("/")
    page.fill("#api-key", wrong)
    page.click("#signin-button")

    expect(page.locator("#signin-error")).to_have_text(expected.json()["error"]["message"])
    expect(page.locator("#view-jobs")).to_be_hidden()
    expect(page.locator("#nav")).to_be_hidden()
    assert page.locator("#jobs-body tr").count() == 0
    assert page.evaluate("() => localStorage.getItem('ftq.apiKey')") is None


def test_text_from_the_api_is_shown_as_text_never_as_markup(
    page: Page, dash_api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    markup = '<img src=x onerror="window.injected=1"><b>bold</b>'
    spec = {**job_spec(tiny_model, train_file, 1), "metadata": {"<i>note</i>": markup}}
    job_id = dash_api.post("/jobs", json=spec).json()["id"]
    dash_api.post(f"/jobs/{job_id}/cancel")  # not trained: only its page matters

    open_job(page, api_key(dash_api), job_id)

    details = page.locator("#job-details")
    expect(details).to_contain_text(markup)
    expect(details).to_contain_text("<i>note</i>")
    assert details.locator("img, b, i").count() == 0
    assert page.evaluate("() => window.injected") is None


def test_a_screenshot_of_a_finished_jobs_page_is_saved_as_an_artifact(
    page: Page, dash_api: StackClient, trained_job: str, artifacts: Path
) -> None:
    assert wait_for_end(dash_api, trained_job, timeout_s=180)["status"] == "succeeded"
    open_job(page, api_key(dash_api), trained_job)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#checkpoints-body tr")).to_have_count(1)
    wait_until(lambda: chart_points(page) == TRAINED_STEPS, timeout_s=10, what="the whole chart")
    page.wait_for_timeout(300)  # let the chart draw its last frame

    path = artifacts / "dashboard-job.png"
    page.screenshot(path=str(path), full_page=True)
    page.goto("/#/")
    expect(page.locator(f'tr[data-job-id="{trained_job}"]')).to_be_visible()
    page.screenshot(path=str(artifacts / "dashboard-jobs.png"))

    print(f"dashboard screenshots: {path} and {artifacts / 'dashboard-jobs.png'}")  # noqa: T201
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_a_checkpoint_downloads_from_the_page_with_the_key(
    page: Page, dash_api: StackClient, trained_job: str, tmp_path: Path
) -> None:
    assert wait_for_end(dash_api, trained_job, timeout_s=180)["status"] == "succeeded"
    open_job(page, api_key(dash_api), trained_job)
    button = page.locator("#checkpoints-body button")
    expect(button).to_have_count(1)

    with page.expect_download() as download_info:
        button.click()

    download = download_info.value
    assert download.suggested_filename == f"{trained_job}-step-{TRAINED_STEPS}.tar.gz"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with tarfile.open(saved, "r:gz") as archive:
        assert f"{trained_job}-step-{TRAINED_STEPS}/adapter_config.json" in archive.getnames()


def test_a_finished_jobs_evaluation_shows_both_models_scores_a_scatter_and_a_band_chart(
    page: Page, dash_api: StackClient, tiny_model: Path, train_file: Path, artifacts: Path
) -> None:
    spec = job_spec(tiny_model, train_file, 2)
    spec["evaluation"] = {
        "dataset": {"id": str(train_file), "max_rows": 8},
        "max_new_tokens": 6,
        "batch_size": 4,
        "baseline": True,
    }
    created = dash_api.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert wait_for_end(dash_api, job_id, timeout_s=240)["status"] == "succeeded"
    predictions = [
        json.loads(line) for line in dash_api.get(f"/jobs/{job_id}/evaluation/predictions").text.splitlines()
    ]

    open_job(page, api_key(dash_api), job_id)

    card = page.locator("#evaluation-card")
    expect(card).to_be_visible()
    expect(card.locator("#evaluation-body tr")).to_have_count(2)
    expect(card.locator('tr[data-model="Fine-tune"] .rows')).to_have_text("8")
    expect(card.locator('tr[data-model="Base model"] .rows')).to_have_text("8")
    wait_until(
        lambda: page.evaluate("() => !!Chart.getChart(document.getElementById('eval-bands'))"),
        timeout_s=10,
        what="the band chart",
    )
    points = page.evaluate(COUNT_EVAL_POINTS)
    assert points["fine-tune"] == sum(row["prediction"] is not None for row in predictions)
    assert points["base"] == sum(row["baseline_prediction"] is not None for row in predictions)
    assert points["diagonal"] == 2
    bands = page.evaluate("() => Chart.getChart(document.getElementById('eval-bands')).data")
    assert len(bands["labels"]) == 5 and [d["label"] for d in bands["datasets"]] == ["fine-tune", "base model"]
    if points["fine-tune"] + points["base"] == 0:
        expect(page.locator("#eval-scatter-empty")).to_contain_text("No parsable answer")
    page.wait_for_timeout(300)  # let the charts draw

    path = artifacts / "dashboard-evaluation.png"
    card.scroll_into_view_if_needed()
    page.screenshot(path=str(path), full_page=True)
    print(f"evaluation screenshot: {path}")  # noqa: T201
    assert path.stat().st_size > 10_000

    # The tiny model seldom answers with a number: graded rows served in place of its own show the colours and bands.
    graded = [
        {"row": 0, "truth": 30.0, "prediction": 35.0, "grade": "hit", "baseline_prediction": 90.0},
        {"row": 1, "truth": 80.0, "prediction": 140.0, "grade": "near", "baseline_prediction": None},
        {"row": 2, "truth": 200.0, "prediction": 20.0, "grade": "miss", "baseline_prediction": 210.0},
        {"row": 3, "truth": 600.0, "prediction": None, "grade": "miss", "baseline_prediction": 100.0},
    ]
    body = "".join(json.dumps(row) + "\n" for row in graded)
    page.route(re.compile(r"/evaluation/predictions$"), lambda route: route.fulfill(body=body))
    page.reload()
    wait_until(
        lambda: page.evaluate("() => !!Chart.getChart(document.getElementById('eval-bands'))"),
        timeout_s=10,
        what="the band chart over graded rows",
    )
    sets = page.evaluate(
        "() => Chart.getChart(document.getElementById('eval-scatter')).data.datasets"
        ".map(d => [d.label, d.backgroundColor, d.data.length])"
    )
    assert sets[:4] == [
        ["fine-tune: hit", "#2f9e57", 1],
        ["fine-tune: near miss", "#e08a1e", 1],
        ["fine-tune: miss", "#c8322b", 1],
        ["base model", "rgba(0,0,0,0)", 3],
    ]
    maes = page.evaluate("() => Chart.getChart(document.getElementById('eval-bands')).data.datasets.map(d => d.data)")
    assert maes == [[5, 60, 180, None, None], [60, None, 10, None, 500]]
    expect(page.locator("#eval-scatter-empty")).to_be_hidden()
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "dashboard-evaluation-graded.png"), full_page=True)


def test_an_evaluation_jobs_page_names_its_kind_and_rows_and_labels_the_base_model_it_scored(
    page: Page, dash_api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    spec = {
        "kind": "evaluation",
        "base_model": str(tiny_model),
        "evaluation": {"dataset": {"id": str(train_file), "max_rows": 4}, "max_new_tokens": 4, "batch_size": 4},
    }
    created = dash_api.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert wait_for_end(dash_api, job_id, timeout_s=240)["status"] == "succeeded"

    open_job(page, api_key(dash_api), job_id)

    details = page.locator("#job-details")
    expect(details).to_contain_text("Kindevaluation")
    expect(details).to_contain_text(f"Dataset{train_file}")
    card = page.locator("#evaluation-card")
    expect(card.locator("#evaluation-body tr")).to_have_count(1)
    expect(card.locator('tr[data-model="Base model"] .rows')).to_have_text("4")
    wait_until(
        lambda: page.evaluate("() => !!Chart.getChart(document.getElementById('eval-bands'))"),
        timeout_s=10,
        what="the band chart",
    )
    bands = page.evaluate("() => Chart.getChart(document.getElementById('eval-bands')).data")
    assert [d["label"] for d in bands["datasets"]] == ["base model"]
