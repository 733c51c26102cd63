"""Schemathesis fuzzes every operation of the OpenAPI schema against the real app and a real database
(SQLite and PostgreSQL): no request may get a 500, and every response must match the schema it documents.

The operations are driven with Hypothesis directly (schemathesis' pytest plugin does not run on pytest 9.2).
"""

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from shared.auth import create_api_key
from shared.db import session_scope
from tests.conftest import clear_caches

# 503 and 504 are documented answers (no validation worker runs here, so a dry run times out: 504); any
# other 5xx is a bug.
DOCUMENTED_5XX = (503, 504)


def no_undocumented_server_error(ctx: Any, response: Any, case: schemathesis.Case) -> None:
    """Like schemathesis' `not_a_server_error`, but a documented 503/504 in the error envelope is an answer."""
    if response.status_code in DOCUMENTED_5XX and "error" in response.json():
        return
    not_a_server_error(ctx, response, case)


CHECKS = [
    no_undocumented_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = int(os.environ.get("FTQ_FUZZ_EXAMPLES", "10"))  # more for a deeper run by hand


def fuzz(operation: Any, headers: dict[str, str], real: dict[str, str], seen: Counter[tuple[str, int]]) -> None:
    """Send generated requests to one operation (counting the status codes in `seen`); raises on the first
    (shrunk) failing one. Half the cases name a resource that exists (`real`), so routes get past their 404."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    def run(case: schemathesis.Case) -> None:
        for name, value in (case.path_parameters or {}).items():
            if name in real and hash(str(value)) % 2 == 0:
                case.path_parameters[name] = real[name]
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        seen[(operation.label, response.status_code)] += 1

    run()


def _describe(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    parts += [f"  {type(sub).__name__}: {sub}" for sub in getattr(exc, "exceptions", [])]
    return "\n".join(parts)[:3000]


def _real_resources(app: Any, raw_key: str, spec: dict[str, Any]) -> dict[str, str]:
    """Make a job, a file and a step that exist, named by the path parameters that would take them."""
    with TestClient(app, headers={"Authorization": f"Bearer {raw_key}"}) as client:
        job = client.post("/jobs", json=spec).json()["id"]
        upload = client.post("/files", files={"file": ("rows.jsonl", b'{"text": "a Price is $1.00"}\n')})
    return {"job_id": job, "file_id": upload.json()["id"], "name": "fuzzer"}


def test_no_request_gets_a_500_or_an_undocumented_response(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], spec: dict[str, Any]
) -> None:
    monkeypatch.setenv("FTQ_RATE_LIMIT", "1000000")  # the fuzzer sends thousands of requests
    monkeypatch.setenv("FTQ_DRY_RUN_TIMEOUT", "0.2")  # no validation worker runs here: dry runs time out fast
    clear_caches()
    with session_scope() as session:
        _key, raw = create_api_key(session=session, name="fuzzer", is_admin=True)
        session.commit()
    app = create_app()
    real = _real_resources(app, raw, spec)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    seen: Counter[tuple[str, int]] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        try:
            fuzz(operation, {"Authorization": f"Bearer {raw}"}, real, seen)
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, not just the first
            failures[operation.label] = _describe(exc)

    print(sorted(seen.items()))  # noqa: T201 (what was exercised, shown with -s)
    assert operations >= 20
    assert failures == {}, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
