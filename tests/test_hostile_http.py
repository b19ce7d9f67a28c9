"""The hostile-input corpus (loadtests/hostile.py) against the shared server: every case
gets an answer below 500 (or the connection closed at the protocol level) and the server
is still ready after it."""

from __future__ import annotations

import httpx
import pytest

from loadtests.hostile import corpus, send
from tests.conftest import MAX_REQUEST_BYTES

pytestmark = pytest.mark.engine

CASES = corpus(MAX_REQUEST_BYTES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_a_client_error(server, auth, case):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        status = send(http, case, auth)
    assert status < 500, f"{case.name}: {status}"
    if case.name.startswith("n 10"):  # can never fit: a client error, not "retry later"
        assert status == 400
    assert httpx.get(server.url + "/ready", timeout=30).status_code == 200
