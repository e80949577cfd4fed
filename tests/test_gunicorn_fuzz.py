"""What reaches the gateway under gunicorn, and what gunicorn answers itself: a raw-socket fuzz (header sizes,
control characters, long request lines, many headers) against a gateway with the shipped gunicorn settings.
Nothing may answer a 5xx or show a trace; every request within the limits the gateway documents gets the gateway's
own JSON answer (an oversized token its JSON 401); what gunicorn still answers in HTML is counted and listed."""

import random
import re
import socket
from collections import Counter

import pytest

from tests.conftest import ROOT, Gunicorn, free_port

REQUESTS = 1500
TOKEN_LIMIT = 8192  # the longest bearer token the gateway reads (gateway/schemas.py)
# gunicorn's limits as gateway/gunicorn_conf.py sets them (docs/operations.md lists the same)
FIELD_SIZE, REQUEST_LINE, FIELDS = 16384, 8190, 100


def test_the_shipped_gunicorn_limits_are_the_ones_tested_here():
    conf = (ROOT / "gateway" / "gunicorn_conf.py").read_text()
    assert re.findall(r"^limit_request_(\w+) = (\d+)$", conf, re.M) == [
        ("line", str(REQUEST_LINE)), ("fields", str(FIELDS)), ("field_size", str(FIELD_SIZE))]
    assert FIELD_SIZE >= len("Authorization: Bearer ") + TOKEN_LIMIT + 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    gateway = Gunicorn({"KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}/auth/",
                        "KEYCLOAK_PUBLIC_URL": "http://localhost:8180/auth/", "KEYCLOAK_CLIENT_SECRET": "x",
                        "GATEWAY_LIMIT_PER_USERNAME": "off", "GATEWAY_LIMIT_PER_ADDRESS": "off",
                        "TMPDIR": str(tmp_path_factory.mktemp("locks"))}).wait_ready()
    yield gateway
    gateway.stop()


def exchange(port, raw):
    """Send raw bytes, read the whole answer (the connection is closed after it): (status, content type, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return (int(match.group(1)) if match else None), headers.get("content-type", ""), body.decode("latin-1")


def request(path="/api/me", headers=(), method="GET", version="HTTP/1.1"):
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


CONTROLS = [chr(c) for c in (*range(0, 9), *range(10, 32), 127) if chr(c) not in "\r\n"]


def generated(rng):
    """(kind, raw request, whether the gateway documents it so that it must reach the gateway) tuples."""
    for _ in range(REQUESTS):
        kind = rng.choice(["token size", "header size", "control character", "request line", "many headers"])
        if kind == "token size":
            size = rng.choice([rng.randint(1, TOKEN_LIMIT), rng.randint(TOKEN_LIMIT, 16000), rng.randint(16400, 40000)])
            line = "Authorization: Bearer " + "a" * size
            yield kind, request(headers=[line]), len(line) + 2 <= FIELD_SIZE
        elif kind == "header size":
            size = rng.randint(1, 30000)
            line = "X-Custom: " + "b" * size
            yield kind, request(headers=[line]), len(line) + 2 <= FIELD_SIZE
        elif kind == "control character":
            value = "".join(rng.choice([rng.choice(CONTROLS), "x"]) for _ in range(rng.randint(1, 20)))
            yield kind, request(headers=[f"X-Odd: {value}"]), not any(c in value for c in CONTROLS)
        elif kind == "request line":
            path = "/" + "c" * rng.randint(1, 12000)
            yield kind, request(path=path), len(f"GET {path} HTTP/1.1") <= REQUEST_LINE
        else:
            count = rng.randint(1, 160)
            yield kind, request(headers=[f"X-H{i}: v" for i in range(count)]), count + 2 <= FIELDS


def test_raw_requests_get_no_5xx_no_trace_and_the_gateways_own_answer_within_its_limits(server):
    rng = random.Random(20261125)
    gunicorns, gateways = Counter(), Counter()
    for kind, raw, documented in generated(rng):
        status, content_type, body = exchange(server.port, raw)
        assert status is not None and status < 500, (kind, status, body[:200])
        assert "Traceback" not in body and 'File "' not in body, body[:500]
        if content_type == "application/json":
            gateways[(kind, status)] += 1
            assert body.startswith('"code=') or body.startswith("{"), body[:200]
        else:
            gunicorns[(kind, status)] += 1
            assert not documented, (kind, status, body[:200])  # within the limits: the gateway's to answer
    pytest.__dict__.setdefault("fuzzed_requests", {})["raw to gunicorn"] = REQUESTS
    print("\ngateway's JSON answers:", dict(sorted(gateways.items())))
    print("gunicorn's HTML answers:", dict(sorted(gunicorns.items())))
    # What remains gunicorn's, as docs/operations.md lists it: nothing else.
    assert {status for _, status in gunicorns} <= {400, 414, 431}
    assert {kind for kind, _ in gunicorns} <= {"control character", "request line", "header size", "token size",
                                               "many headers"}


@pytest.mark.parametrize("size", [TOKEN_LIMIT + 1, 9000, 16000])
def test_an_oversized_bearer_token_gets_the_gateways_json_401(server, size):
    status, content_type, body = exchange(server.port, request(headers=["Authorization: Bearer " + "a" * size]))
    assert (status, content_type, body) == (401, "application/json",
                                            '"code=401, message=access token is invalid or expired"\n')


@pytest.mark.parametrize("raw, status", [
    (request(headers=["X-Odd: a\x01b"]), 400),  # a control character in a header value
    (request(headers=["Authorization: Bearer " + "a" * 17000]), 431),  # a header field over 16 KiB
    (request(path="/" + "c" * 9000), 414),  # a request line over 8190 bytes
    (request(headers=[f"X-H{i}: v" for i in range(120)]), 431),  # over 100 header fields
])
def test_what_gunicorn_still_answers_itself(server, raw, status):
    answer_status, content_type, body = exchange(server.port, raw)
    assert (answer_status, content_type.split(";")[0]) == (status, "text/html")
