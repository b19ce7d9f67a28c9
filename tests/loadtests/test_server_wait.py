"""A bench started beside a server that is still loading waits for it (the server answers
503 with Retry-After until the engine is up); any other refusal ends the bench with the
server's own message instead of a traceback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtests import cli

MODELS = {"object": "list", "data": [{"id": "tiny", "root": "/models/tiny"}]}


def serve(replies: list[tuple[int, dict]]):
    """A server answering /v1/models with `replies` in order, then the last one."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, body = replies[min(len(seen), len(replies) - 1)]
            seen.append((self.path, self.headers.get("Authorization")))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}", seen


def error(message: str) -> dict:
    return {"error": {"message": message, "type": "x", "param": None, "code": None}}


def test_bench_waits_while_the_model_loads():
    loading = (503, error("the model is still loading; retry shortly"))
    httpd, url, seen = serve([loading, loading, (200, MODELS)])
    try:
        assert cli._server_model(url, "key") == ("tiny", "/models/tiny")
    finally:
        httpd.shutdown()
    assert seen == [("/v1/models", "Bearer key")] * 3


def test_bench_stops_with_the_servers_message(monkeypatch):
    httpd, url, _ = serve([(401, error("invalid API key"))])
    try:
        with pytest.raises(SystemExit, match="answered 401.*invalid API key"):
            cli._server_model(url, None)
    finally:
        httpd.shutdown()
    monkeypatch.setattr(cli, "LOAD_WAIT_S", 0)  # a server that never finishes loading
    httpd, url, _ = serve([(503, error("the model is still loading; retry shortly"))])
    try:
        with pytest.raises(SystemExit, match="answered 503.*still loading"):
            cli._server_model(url, None)
    finally:
        httpd.shutdown()


def test_bench_says_when_nothing_listens():
    httpd, url, _ = serve([(200, MODELS)])
    httpd.shutdown()
    httpd.server_close()
    with pytest.raises(SystemExit, match="cannot reach"):
        cli._server_model(url, None)


def test_retry_after_is_seconds_or_a_date():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    assert cli.retry_after_s("3") == 3.0
    assert cli.retry_after_s("0") == 0.0
    assert cli.retry_after_s(None) == 5.0
    assert cli.retry_after_s("soon") == 5.0 and cli.retry_after_s("nan") == 5.0
    assert cli.retry_after_s("-4") == 0.0 and cli.retry_after_s("86400") == 60.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True)
    assert 18 <= cli.retry_after_s(later) <= 20
    assert cli.retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # already past
