"""Property-based API check: schemathesis drives every documented operation of /openapi.json on a
live control plane; no 5xx, every status documented, every response matching its schema."""

from __future__ import annotations

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.control.app import ControlPlane
from tests.control.helpers import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}


def test_openapi_conformance(threaded_cp: ControlPlane) -> None:
    url = threaded_cp.url
    r = httpx.post(
        url + "/identifier/projectToken/login", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    headers = {"Authorization": "Bearer " + r.json()["access_token"], "X-GS2-CLIENT-ID": CLIENT_ID}
    # Some data to find: a namespace and a room, so lookups also answer 200.
    ns = {"name": "seed", "serverType": "relay", "serverSpec": "realtime1.nano"}
    assert httpx.post(url + "/realtime/", json=ns, headers=headers).status_code == 200
    assert httpx.post(url + "/realtime/seed/room", json={"name": "room"}, headers=headers).status_code == 200

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert len(operations) == 14, labels  # 12 GS2 methods + login + user token mint
    session = requests.Session()
    statuses: dict[str, set[int]] = {}
    try:
        for op in operations:
            for mode, examples in EXAMPLES.items():

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def run(case: schemathesis.Case) -> None:
                    response = case.call(base_url=url, session=session, headers=headers)
                    statuses.setdefault(case.operation.label, set()).add(response.status_code)
                    case.validate_response(response, checks=CHECKS, headers=headers)

                run()
    finally:
        session.close()
    assert all(code < 500 for codes in statuses.values() for code in codes), statuses
    # The happy paths were reached too, not only the error answers.
    assert 200 in statuses["POST /realtime/"] and 200 in statuses["GET /realtime/"], statuses
