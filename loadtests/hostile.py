"""A corpus of hostile requests: every one must get an answer below 500, and the server
must stay ready through all of them.

`python -m loadtests.hostile --url http://127.0.0.1:8000 --api-key KEY` runs it against a
server (loopback only) and prints one line per case and a summary; without `--url` it
starts `longserve serve` (eager, `--max-request-bytes 1MiB`) and stops it afterwards. The
test suite runs the same corpus against its shared server (tests/test_hostile_http.py).

Cases: bodies over the size limit (with and without Content-Length), deep JSON nesting,
invalid UTF-8 and lone surrogates, NaN/Infinity and numbers past every integer type, huge
`max_tokens`/`n`/`logprobs`/`seed`, wrong types in every common field, huge strings and
arrays under the size limit, truncated and empty bodies, wrong methods, content types and
paths, and headers that lie about the body.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import httpx

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Case:
    name: str
    body: bytes | None = None
    path: str = CHAT
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    chunked: bool = False  # send the body without Content-Length
    raw: bytes | None = None  # the whole request, written to a socket as it is


def _chat(**fields) -> bytes:
    return json.dumps({"messages": HI, "max_tokens": 4, **fields}).encode()


def corpus(max_request_bytes: int) -> list[Case]:
    over = max_request_bytes + 1024
    deep = 100_000
    cases = [
        # size
        Case("body over the limit", b'{"messages": [{"role": "user", "content": "'
             + b"x" * over + b'"}]}'),
        Case("body over the limit, chunked", b'{"prompt": "' + b"y" * over + b'"}',
             path=COMPLETIONS, chunked=True),
        Case("Content-Length larger than the body", raw=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 100\r\n{auth}\r\n{}")),
        Case("Content-Length smaller than the body", raw=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 5\r\n{auth}\r\n" + _chat())),
        Case("negative Content-Length", raw=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: -1\r\n{auth}\r\n" + _chat())),
        Case("two Content-Lengths", raw=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 2\r\nContent-Length: 900\r\n{auth}\r\n{}")),
        Case("header without a colon", raw=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n"
            b"{auth}\r\n{}")),
        Case("just under the limit: one huge message",
             _chat(messages=[{"role": "user", "content": "z " * (max_request_bytes // 4)}])),
        Case("100k tiny messages", json.dumps(
            {"messages": [{"role": "user", "content": "a"}] * 20_000, "max_tokens": 1}).encode()),
        Case("50k stop strings", _chat(stop=["s"] * 50_000)),
        Case("logit_bias with 100k entries", _chat(logit_bias={str(i): 1 for i in range(100_000)})),
        # nesting
        Case("deep array nesting", b"[" * deep + b"]" * deep),
        Case("deep object nesting in a field",
             b'{"messages": [{"role": "user", "content": "hi"}], "metadata": '
             + b'{"a": ' * deep + b"1" + b"}" * deep + b"}"),
        Case("deep nesting in content", b'{"messages": [{"role": "user", "content": '
             + b"[" * deep + b"]" * deep + b"}]}"),
        Case("deep nesting in tools", _chat()[:-1] + b', "tools": ' + b"[" * 5000 + b"]" * 5000
             + b"}"),
        # encoding
        Case("invalid UTF-8", b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'),
        Case("invalid UTF-8 in a key", b'{"mess\xc0ages": []}'),
        Case("lone surrogate escape", b'{"messages": [{"role": "user", "content": "\\ud800"}],'
             b' "max_tokens": 4}'),
        Case("NUL bytes in content", _chat(messages=[{"role": "user", "content": "a\u0000b"}])),
        Case("UTF-16 body", json.dumps({"messages": HI}).encode("utf-16")),
        Case("BOM before the JSON", b"\xef\xbb\xbf" + _chat()),
        # numbers
        Case("NaN temperature", b'{"messages": [{"role": "user", "content": "hi"}], '
             b'"temperature": NaN, "max_tokens": 4}'),
        Case("Infinity top_p", b'{"messages": [{"role": "user", "content": "hi"}], '
             b'"top_p": Infinity, "max_tokens": 4}'),
        Case("1e999 temperature", b'{"messages": [{"role": "user", "content": "hi"}], '
             b'"temperature": 1e999, "max_tokens": 4}'),
        Case("max_tokens 10**30", _chat(max_tokens=10**30)),
        Case("max_tokens 2**63", _chat(max_tokens=2**63)),
        Case("max_tokens 10**9", _chat(max_tokens=10**9)),
        Case("max_completion_tokens 10**9", _chat(max_completion_tokens=10**9)),
        Case("negative max_tokens", _chat(max_tokens=-(2**40))),
        Case("n 10**9", _chat(n=10**9)),
        Case("n 10**4", _chat(n=10_000)),
        Case("top_logprobs 10**6", _chat(logprobs=True, top_logprobs=10**6)),
        Case("completion logprobs 10**6", json.dumps(
            {"prompt": "hi", "max_tokens": 2, "logprobs": 10**6}).encode(), path=COMPLETIONS),
        Case("seed 2**80", _chat(seed=2**80)),
        Case("seed -1", _chat(seed=-1)),
        Case("temperature -5", _chat(temperature=-5)),
        Case("frequency_penalty 10**6", _chat(frequency_penalty=10**6)),
        Case("repetition_penalty 0", _chat(repetition_penalty=0)),
        Case("min_tokens over max_tokens", _chat(min_tokens=100, max_tokens=4)),
        Case("kv budget 10**20", _chat(kv_policy={"name": "snapkv", "budget": 10**20})),
        Case("kv budget -1", _chat(kv_policy={"name": "snapkv", "budget": -1})),
        Case("sparse min_len 10**20", _chat(attention={"name": "sparse", "min_len": 10**20})),
        Case("sparse block 10**20", _chat(attention={"name": "sparse", "block": 10**20})),
        Case("sparse density 1e300", _chat(attention={"name": "sparse", "density": 1e300})),
        Case("rag top_k 10**20", _chat(documents=["a doc"], rag={"top_k": 10**20})),
        Case("rag chunk_tokens 10**20", _chat(documents=["a doc"], rag={"chunk_tokens": 10**20})),
        Case("rag chunk_tokens 0", _chat(documents=["a doc"], rag={"chunk_tokens": 0})),
        Case("logit_bias key 10**20", _chat(logit_bias={str(10**20): 1})),
        Case("stop_token_ids 10**20", _chat(stop_token_ids=[10**20])),
        Case("priority 10**20", _chat(priority=10**20)),
        Case("truncate_prompt_tokens 10**20", _chat(truncate_prompt_tokens=10**20)),
        # types
        Case("messages a string", _chat(messages="hi")),
        Case("messages an object", _chat(messages={"role": "user", "content": "hi"})),
        Case("message without role", _chat(messages=[{"content": "hi"}])),
        Case("role unknown", _chat(messages=[{"role": "wizard", "content": "hi"}])),
        Case("content a number", _chat(messages=[{"role": "user", "content": 12}])),
        Case("content parts of unknown type",
             _chat(messages=[{"role": "user", "content": [{"type": "hologram", "x": 1}]}])),
        Case("image part with a file URL", _chat(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])),
        Case("image part with a remote URL", _chat(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}}]}])),
        Case("max_tokens a string", _chat(max_tokens="many")),
        Case("max_tokens a float", _chat(max_tokens=3.7)),
        Case("max_tokens a list", _chat(max_tokens=[4])),
        Case("stream a string", _chat(stream="yes")),
        Case("stop a number", _chat(stop=7)),
        Case("tools junk", _chat(tools=[{"type": "function", "function": 5}])),
        Case("tool_choice junk", _chat(tool_choice={"type": "function"})),
        Case("response_format junk", _chat(response_format={"type": "json_schema",
                                                           "json_schema": "nope"})),
        Case("response_format huge schema", _chat(response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {f"p{i}": {"type": "string"}
                                                 for i in range(1000)}}}})),
        Case("regex that never compiles", _chat(structured_outputs={"regex": "(((("})),
        Case("documents a number", _chat(documents=5)),
        Case("documents with a huge count", _chat(documents=["d"] * 50_000)),
        Case("rag options junk", _chat(documents=["d"], rag={"top_k": "all"})),
        Case("context_strategy a list", _chat(context_strategy=["reject"])),
        Case("attention junk", _chat(attention={"name": "sparse", "density": "half"})),
        Case("model a number", _chat(model=5)),
        Case("model unknown", _chat(model="../../etc/passwd")),
        Case("prompt a list of lists of huge ints", json.dumps(
            {"prompt": [[2**40, -1]], "max_tokens": 2}).encode(), path=COMPLETIONS),
        Case("prompt token ids out of the vocabulary", json.dumps(
            {"prompt": [10**7, 5], "max_tokens": 2}).encode(), path=COMPLETIONS),
        Case("prompt empty list", json.dumps({"prompt": [], "max_tokens": 2}).encode(),
             path=COMPLETIONS),
        Case("echo with logprobs over prompt", json.dumps(
            {"prompt": "hi", "echo": True, "logprobs": 5, "max_tokens": 1}).encode(),
             path=COMPLETIONS),
        # shape of the request
        Case("empty body", b""),
        Case("truncated JSON", _chat()[:-7]),
        Case("JSON null", b"null"),
        Case("trailing garbage", _chat() + b"}}}"),
        Case("duplicate keys", b'{"messages": [], "messages": [{"role": "user", "content": '
             b'"hi"}], "max_tokens": 4}'),
        Case("form body", b"messages=hi", headers={"content-type":
                                                   "application/x-www-form-urlencoded"}),
        Case("no content type", _chat(), headers={}),
        Case("content type with a huge parameter", _chat(), headers={
            "content-type": "application/json; charset=" + "x" * 8000}),
        Case("GET on chat", None, method="GET"),
        Case("PUT on chat", _chat(), method="PUT"),
        Case("DELETE on models", None, path="/v1/models", method="DELETE"),
        Case("unknown path", _chat(), path="/v1/chat/completions/../../admin"),
        Case("encoded traversal", None, path="/v1/%2e%2e/%2e%2e/etc/passwd", method="GET"),
        Case("very long path", None, path="/v1/" + "a" * 6000, method="GET"),
        Case("query string junk", _chat(), path=CHAT + "?" + "&".join(["a=b"] * 2000)),
        Case("huge header", _chat(), headers={"content-type": "application/json",
                                              "x-junk": "h" * 6000}),
        Case("request id header huge", _chat(), headers={"content-type": "application/json",
                                                         "x-request-id": "r" * 6000}),
    ]
    return cases


def send_raw(url: str, case: Case, auth: dict[str, str]) -> int:
    """Write `case.raw` to a socket, half-close, read the status line (0: none came)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    auth_lines = "".join(f"{k}: {v}\r\n" for k, v in auth.items()).encode()
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(case.raw.replace(b"{auth}", auth_lines, 1))
        sock.shutdown(socket.SHUT_WR)
        try:
            head = sock.recv(64)
        except (TimeoutError, ConnectionResetError):
            return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if head.startswith(b"HTTP/") and len(parts) > 1 else 0


def send(http: httpx.Client, case: Case, auth: dict[str, str]) -> int:
    if case.raw is not None:
        return send_raw(str(http.base_url), case, auth)
    headers = {**auth, **case.headers}
    content = case.body
    if case.chunked and content is not None:
        body = content
        content = (body[i:i + 65536] for i in range(0, len(body), 65536))
    try:
        resp = http.request(case.method, case.path, content=content, headers=headers)
    except httpx.RemoteProtocolError:
        return 0  # the connection was refused at the protocol level (e.g. a lying length)
    return resp.status_code


def run(url: str, api_key: str | None, max_request_bytes: int,
        out=sys.stdout) -> tuple[int, list[tuple[str, int]]]:
    """Every case once; returns (cases, [(case, status) with status >= 500 or the server
    not ready after it]). Status 0: the server closed the connection instead of
    answering (counted as fine: nothing was lost, nothing crashed)."""
    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise SystemExit("the hostile corpus runs against a loopback server only")
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    failures, cases = [], corpus(max_request_bytes)
    with httpx.Client(base_url=url, timeout=600) as http:
        for case in cases:
            start = time.monotonic()
            status = send(http, case, auth)
            ready = httpx.get(url + "/ready", timeout=30).status_code
            print(f"{status:4d}  ready={ready}  {time.monotonic() - start:6.2f}s  {case.name}",
                  file=out)
            if status >= 500 or ready != 200:
                failures.append((case.name, status))
    return len(cases), failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.hostile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback); default: start one")
    p.add_argument("--api-key")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20,
                   help="the server's --max-request-bytes (sizes the over-limit cases)")
    args = p.parse_args(argv)
    server = None
    if args.url is None:
        import tempfile
        from pathlib import Path

        from loadtests.servers import longserve

        args.api_key = args.api_key or "hostile-corpus"
        server = longserve(Path(tempfile.mkdtemp()) / "longserve.log", "--enforce-eager",
                           "--api-key", args.api_key, "--max-model-len", "2048",
                           "--max-request-bytes", str(args.max_request_bytes),
                           "--default-max-tokens", "16").start().wait_ready()
        args.url = server.url
    try:
        count, failures = run(args.url, args.api_key, args.max_request_bytes)
    finally:
        if server is not None:
            server.stop()
    print(f"{count} cases, {len(failures)} with a 5xx or the server not ready after them")
    for name, status in failures:
        print(f"  FAIL {status}: {name}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
