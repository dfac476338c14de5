"""Property-based API checks on a live control plane, from /openapi.json: every documented
operation alone (no 5xx, every status documented, every response matching its schema), then
stateful runs that follow the schema's links (create a namespace, want a room, get it, delete
it, want it again, ...): the same, no use after delete, no created resource missing, and after
every 2xx what was stored can be read back (the listings and the item answer 200).

RELAY_SCHEMATHESIS_EXAMPLES multiplies the examples (1 in `make test`; e.g. 20 for a long run)."""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from relay.control.app import ControlPlane
from tests.control.helpers import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SCALE = int(os.environ.get("RELAY_SCHEMATHESIS_EXAMPLES", "1"))
EXAMPLES = {GenerationMode.POSITIVE: 25 * SCALE, GenerationMode.NEGATIVE: 15 * SCALE}
SCENARIOS = 80 * SCALE
"""A batch's scenarios: 40, after the rest of tests/control, once never read a wanted room back
(the chains check below failed); further batches run only until they are walked."""


def segment(name: str) -> str:
    """A name as a path segment that no client normalizes away: GS2 names may be `.` or `..`,
    which a URL library resolves as dot-segments (`/realtime/.` is `/realtime/`); the control
    plane decodes `%2E` back to the name."""
    return quote(name, safe="").replace(".", "%2E")


def project_headers(url: str) -> dict[str, str]:
    r = httpx.post(
        url + "/identifier/projectToken/login", json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    return {"Authorization": "Bearer " + r.json()["access_token"], "X-GS2-CLIENT-ID": CLIENT_ID}


def test_openapi_conformance(threaded_cp: ControlPlane) -> None:
    url = threaded_cp.url
    headers = project_headers(url)
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


def test_stateful_runs_along_the_links(threaded_cp: ControlPlane) -> None:
    url = threaded_cp.url
    headers = project_headers(url)
    session = requests.Session()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    spec = httpx.get(url + "/openapi.json").json()
    links = {
        op["operationId"]: sorted(op["responses"]["200"].get("links", {}))
        for item in spec["paths"].values()
        for op in item.values()
    }
    assert links["createNamespace"] == ["DeleteNamespace", "DescribeRooms", "GetNamespace", "WantRoom"]
    assert links["deleteRoom"] == ["GetRoom", "WantRoomAgain"]
    calls: dict[str, set[int]] = {}
    deleted: set[tuple[str | None, Any]] = set()
    wanted_again: list[tuple[str | None, Any]] = []

    def readable_back(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
        """After a 2xx, what is stored can be answered: the listings, and the item itself."""
        calls.setdefault(case.operation.label, set()).add(response.status_code)
        if not 200 <= response.status_code < 300:
            return None
        item = response.json().get("item")
        room = (case.path_parameters or {}).get("namespaceName"), isinstance(item, dict) and item.get("name")
        if case.operation.label == "DELETE /realtime/{namespaceName}/room/{roomName}":
            deleted.add(room)
        elif case.operation.label == "POST /realtime/{namespaceName}/room" and room in deleted:
            wanted_again.append(room)
        reads = ["/realtime/"]
        namespace = (case.path_parameters or {}).get("namespaceName")
        namespace = namespace and unquote(namespace)  # schemathesis keeps `.` as `%2E` there
        if case.operation.label == "POST /realtime/":
            namespace = namespace or response.json()["item"]["name"]
        if namespace:
            reads += [f"/realtime/{segment(namespace)}", f"/realtime/{segment(namespace)}/room"]
        for path in reads:
            got = session.get(url + path, headers=headers)
            assert got.status_code in (200, 404) and got.status_code < 500, (path, got.text)
        return True

    class Links(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": url, "session": session, "headers": headers}

        def teardown(self) -> None:
            """Every scenario meets the same server: no namespace (Hypothesis replays draws)."""
            super().teardown()
            while names := [
                n["name"] for n in session.get(url + "/realtime/", headers=headers).json()["items"]
            ]:
                for name in names:
                    gone = session.delete(f"{url}/realtime/{segment(name)}", headers=headers)
                    assert gone.status_code == 200, (name, gone.text)

        def validate_response(
            self, response: Response, case: schemathesis.Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response,
                checks=[*CHECKS, use_after_free, ensure_resource_availability, readable_back],
                headers=headers,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    chains = (
        "POST /realtime/",
        "POST /realtime/{namespaceName}/room",
        "GET /realtime/{namespaceName}/room/{roomName}",
        "DELETE /realtime/{namespaceName}/room/{roomName}",
    )

    def walked() -> bool:
        return all(200 in calls.get(label, set()) for label in chains) and bool(wanted_again)

    try:
        # Each batch draws new scenarios (Hypothesis is not seeded: one seed would repeat the same
        # draws in every batch); another batch only while the chains have not been walked end to
        # end, since which draws walk them depends on the schema and on the live server's answers
        for _attempt in range(12):
            # Hypothesis may see one choice prefix lead to different rules (FlakyStrategyDefinition):
            # which links can be followed depends on the live server's answers (a room provisioned
            # yet or not), not only on the draws. That ends the batch, not the walk: the next goes on.
            with contextlib.suppress(FlakyStrategyDefinition):
                Links.run(
                    settings=settings(
                        max_examples=SCENARIOS,
                        stateful_step_count=6,
                        phases=[Phase.generate],  # the server keeps its state: no replaying, no shrinking
                        deadline=None,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                    )
                )
            if walked():
                break
    finally:
        session.close()
    assert all(code < 500 for codes in calls.values() for code in codes), calls
    # The chains were walked, not only their first step: rooms wanted, read, deleted, wanted again.
    for label in chains:
        assert 200 in calls.get(label, set()), (label, calls)
    assert wanted_again, "no room was wanted again after its delete"
