"""/openapi.json matches the server: every route is in it and only those, and for requests
schemathesis generates from it -- valid ones and ones that break it -- the server answers
with a documented status, content type and body schema, never a 500, and rejects every
invalid one. Runs on the real app and tiny model in process (ASGI, no sockets)."""

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving_support import ADMIN, serving_stack

ROUTES = {
    ("POST", "/v1/retrieve"),
    ("GET", "/v1/status"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/v1/admin/models"),
    ("POST", "/v1/admin/sid-deltas"),
    ("POST", "/v1/admin/rollback"),
}
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25  # per operation and mode: enough to hit every documented answer, ~1 s each


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with serving_stack(tmp_path_factory.mktemp("openapi")) as s:
        yield s


@pytest.fixture(scope="module")
def schema(stack):
    return schemathesis.openapi.from_asgi("/openapi.json", stack.app)


def operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


def test_the_spec_lists_exactly_the_routes_the_server_has(stack, schema):
    served = {
        (method, route.path)
        for route in stack.app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    specified = {(op.method.upper(), op.path) for op in operations(schema)}
    assert specified == served == ROUTES


def test_every_error_answer_is_documented_as_a_problem(stack):
    spec = stack.client().get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"]), (method, path)
            if path.startswith("/v1/admin/"):
                assert "401" in op["responses"] and op.get("security"), (method, path)


def _within_compiled_width(case):
    """A valid retrieve body whose beam and k fit the compiled width (10 here), so the
    positive run reaches 200 answers, not only the documented 422 for wider beams."""
    if isinstance(case.body, dict):
        case.body["k"] = min(case.body.get("k", 10), 10)
        case.body["beam"] = min(case.body.get("beam", 10), 10)
    return case


def _run(op, strategy, checks, negative: bool) -> dict[int, int]:
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case):
        sent = {k.lower() for k in (case.headers or {})}
        # a negative case may be one whose Authorization header is the broken part
        headers = {} if negative and "authorization" in sent else dict(ADMIN)
        response = case.call(headers=headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks, headers=headers)

    check()
    return seen


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_generated_requests_get_documented_answers(schema, mode):
    negative = mode is GenerationMode.NEGATIVE
    checks = CONFORMANCE + ([negative_data_rejection] if negative else [])
    for op in operations(schema):
        if negative and not len(op.body):
            continue  # nothing to break in a request without a body or parameters
        seen = _run(op, op.as_strategy(mode), checks, negative)
        assert seen, op.path
        if op.path == "/v1/retrieve" and not negative:
            fitted = op.as_strategy(mode).map(_within_compiled_width)
            assert 200 in _run(op, fitted, checks, negative)
