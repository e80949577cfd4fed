"""W3C Trace Context (https://www.w3.org/TR/trace-context/): a well-formed `traceparent` is taken, anything else
begins a new trace; the trace goes on, with the gateway's own span as the parent, to Keycloak on every call and to
the BFF proxy's upstreams; its trace id is in every log line of the request."""

import json
import logging
import re
import socket
import time

import pytest
import requests
import responses

from gateway import create_app
from gateway.logs import JsonFormatter
from tests.conftest import LIVE_URL, TcpRelay, live_config
from tests.test_bff import CSRF, MockRealm, bff_app, log_in
from tests.test_keycloak import BRUTE_FORCE, TOKEN, USERS, grant_answers, invalid_grant, look_up_answers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT}-01"
SENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
WRONG_PASSWORD = {"username": "ahmadakbar", "password": "password1"}


@pytest.fixture
def lines(caplog):
    """The JSON lines the gateway logged during the test, as an operator reads them."""
    caplog.set_level(logging.INFO)
    return lambda: [json.loads(JsonFormatter().format(r)) for r in caplog.records]


def wrong_password(upstream):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [{"id": "u-1", "username": "ahmadakbar"}], {"disabled": False})


def sent(upstream):
    """(url, traceparent fields, tracestate) of every call the gateway made to the mocked Keycloak."""
    calls = []
    for call in upstream.calls:
        parent = SENT.fullmatch(call.request.headers.get("traceparent", ""))
        calls.append((call.request.url.split("?")[0], parent.groups() if parent else None,
                      call.request.headers.get("tracestate")))
    return calls


def test_an_incoming_trace_goes_on_to_every_call_to_keycloak_with_the_gateways_span(client, upstream):
    wrong_password(upstream)
    answer = client.post("/api/login", json=WRONG_PASSWORD,
                         headers={"traceparent": INCOMING, "tracestate": "vendor=abc,other=1"})
    assert (answer.status_code, answer.json) == (400, "code=400, message=wrong password")
    calls = sent(upstream)
    assert [url for url, _, _ in calls] == [TOKEN, TOKEN, USERS, BRUTE_FORCE]  # grant, service token, look-ups
    spans = {span for _, (trace, span, flags), _ in calls}
    assert {(trace, flags) for _, (trace, _, flags), _ in calls} == {(TRACE_ID, "01")}
    assert len(spans) == 1 and PARENT not in spans  # the gateway's own span, one per request
    assert {state for _, _, state in calls} == {"vendor=abc,other=1"}


def test_a_trace_is_begun_when_there_is_none_and_each_request_has_its_own(client, upstream):
    upstream.post(TOKEN, **invalid_grant(400, "Invalid refresh token"))
    upstream.post(TOKEN, **invalid_grant(400, "Invalid refresh token"))
    for _ in range(2):
        assert client.post("/api/refresh", json={"refreshToken": "r"}).status_code == 401
    (_, first, state1), (_, second, state2) = sent(upstream)
    assert first[0] != second[0] and first[1] != second[1]  # two traces, two spans
    assert (first[2], second[2], state1, state2) == ("01", "01", None, None)  # sampled; no tracestate of its own


@pytest.mark.parametrize("traceparent", [
    f"00-{TRACE_ID.upper()}-{PARENT}-01",  # upper-case hex
    f"00-{'0' * 32}-{PARENT}-01",  # the invalid trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # the invalid parent id
    f"ff-{TRACE_ID}-{PARENT}-01",  # the invalid version
    f"00-{TRACE_ID}-{PARENT}-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE_ID}-{PARENT}-1",
    f"00-{TRACE_ID[:-1]}-{PARENT}-01",
    f"00_{TRACE_ID}_{PARENT}_01",
    f" 00-{TRACE_ID}-{PARENT}-01x",
    f"00-{TRACE_ID}-{PARENT}-01,00-{TRACE_ID}-{PARENT}-01",  # two headers, joined by the server
    "", "garbage", "00-" + "a" * 5000,
])
def test_a_malformed_traceparent_begins_a_new_trace_and_drops_the_tracestate(client, upstream, traceparent):
    upstream.post(TOKEN, **invalid_grant(400, "Invalid refresh token"))
    answer = client.post("/api/refresh", json={"refreshToken": "r"},
                         headers={"traceparent": traceparent, "tracestate": "vendor=abc"})
    assert (answer.status_code, answer.json) == (401, "code=401, message=refresh token is invalid or expired")
    ((_, (trace, span, flags), state),) = sent(upstream)
    assert trace not in (TRACE_ID, TRACE_ID.upper()) and (flags, state) == ("01", None)


def test_a_later_version_is_read_by_its_first_four_fields_and_sent_on_as_version_00(client, upstream):
    upstream.post(TOKEN, **invalid_grant(400, "Invalid refresh token"))
    client.post("/api/refresh", json={"refreshToken": "r"}, headers={"traceparent": f"cc-{TRACE_ID}-{PARENT}-03-what"})
    ((_, (trace, span, flags), _),) = sent(upstream)
    assert (trace, flags) == (TRACE_ID, "03") and span != PARENT


@pytest.mark.parametrize("tracestate", ["x" * 513, "vendor=a\tb", "vendor=ü"])
def test_a_tracestate_that_is_too_long_or_not_printable_ascii_is_not_passed_on(client, upstream, tracestate):
    upstream.post(TOKEN, **invalid_grant(400, "Invalid refresh token"))
    client.post("/api/refresh", json={"refreshToken": "r"},
                headers={"traceparent": INCOMING, "tracestate": tracestate.encode().decode("latin-1")})
    ((_, (trace, _, _), state),) = sent(upstream)
    assert (trace, state) == (TRACE_ID, None)


def test_a_later_request_on_the_same_thread_does_not_send_an_earlier_ones_trace(client, upstream):
    wrong_password(upstream)
    client.post("/api/login", json=WRONG_PASSWORD, headers={"traceparent": INCOMING, "tracestate": "vendor=abc"})
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    upstream.get(USERS, json=[{"id": "u-1", "username": "ahmadakbar"}])  # the service token is kept: no new one
    upstream.get(BRUTE_FORCE, json={"disabled": False})
    client.post("/api/login", json=WRONG_PASSWORD)
    calls = sent(upstream)
    assert [state for _, _, state in calls] == ["vendor=abc"] * 4 + [None] * 3
    assert len({trace for _, (trace, _, _), _ in calls[4:]}) == 1 and calls[4][1][0] != TRACE_ID


def test_the_trace_id_is_in_every_log_line_of_the_request(client, upstream, lines):
    grant_answers(upstream, body=requests.ConnectionError("refused"))  # a warning line or two of its own
    client.post("/api/login", json=WRONG_PASSWORD, headers={"traceparent": INCOMING, "X-Request-ID": "t-1"})
    logged = [line for line in lines() if line.get("request_id") == "t-1"]
    assert {line["logger"] for line in logged} >= {"gateway.request", "gateway.audit"}
    assert len(logged) == len(lines())  # every line of the test was this request's
    assert {line["trace_id"] for line in logged} == {TRACE_ID}


def test_a_begun_trace_is_in_the_log_lines_too(client, lines):
    client.get("/nowhere", headers={"X-Request-ID": "t-2"})
    (line,) = [line for line in lines() if line["logger"] == "gateway.request"]
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]) and line["trace_id"] != "0" * 32


def test_the_bff_proxy_sends_the_trace_on_to_the_upstream(tmp_path, echo_upstream, signer):
    app = bff_app(tmp_path, GATEWAY_BFF_UPSTREAMS=f"echo={echo_upstream.url}/base")
    client = app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")  # the echo upstream is real
        log_in(client, MockRealm(mock, signer))
        answer = client.get("/bff/api/echo/orders", headers={**CSRF, "traceparent": INCOMING, "tracestate": "v=1"})
    assert answer.status_code == 200
    headers = answer.json["headers"]
    trace, span, flags = SENT.fullmatch(headers["traceparent"]).groups()
    assert (trace, flags, headers["tracestate"]) == (TRACE_ID, "01", "v=1") and span != PARENT


class RecordingRelay(TcpRelay):
    """The TCP relay to the shared Keycloak, keeping every byte the gateway sent through it, connection by
    connection."""

    def __init__(self, target):
        super().__init__(target)
        self.connections = []  # what the gateway sent on each connection

    def sent(self):
        return "".join(bytes(received).decode("latin-1") for received in list(self.connections))

    def _pump(self, source, sink):
        if source.getsockname()[1] != self.port:  # Keycloak's answers pass untouched
            return super()._pump(source, sink)
        received = bytearray()
        self.connections.append(received)
        try:
            while data := source.recv(65536):
                received += data
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_the_real_keycloak_gets_the_trace_on_every_call_and_answers_as_before(kc):
    user = kc.create_user()
    relay = RecordingRelay(("127.0.0.1", 8180)).start()
    try:
        app = create_app(live_config(KEYCLOAK_URL=f"http://127.0.0.1:{relay.port}/auth/",
                                     KEYCLOAK_PUBLIC_URL=LIVE_URL))
        answer = app.test_client().post("/api/login", json={"username": user.username, "password": "Wrong-pass-1"},
                                        headers={"traceparent": INCOMING})
        assert (answer.status_code, answer.json) == (400, "code=400, message=wrong password")
        deadline = time.monotonic() + 10  # the relay's threads hand the bytes over as they come
        while relay.sent().count("HTTP/1.1\r\n") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = relay.sent()
    finally:
        relay.stop()
    # (a request may follow the previous one's body on the same connection, not on a line of its own)
    requests_sent = re.findall(r"(GET|POST) (/\S*) HTTP/1\.1\r\n((?:[^\r\n]+\r\n)*)\r\n", sent)
    token = "/auth/realms/edm/protocol/openid-connect/token"
    assert sorted((method, path.split("?")[0]) for method, path, _ in requests_sent) == [
        ("GET", f"/auth/admin/realms/edm/attack-detection/brute-force/users/{user.id}"),
        ("GET", "/auth/admin/realms/edm/users"), ("POST", token), ("POST", token)]
    for method, path, headers in requests_sent:
        parent = re.search(r"^traceparent: (\S+)\r$", headers, re.MULTILINE | re.IGNORECASE)
        assert parent and SENT.fullmatch(parent[1])[1] == TRACE_ID, (method, path)
