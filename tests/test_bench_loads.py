"""The bench's two load generators against a fake token endpoint on loopback (no Keycloak): each connection of
wrk (its Lua `response()` hook) and each slot of the open-loop generator chains the refresh tokens it is handed,
and the open loop counts latency from each request's intended start, so a stall of the server shows in the
requests it held up."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import openloop, wrk
from bench.wrk import Request


class RotatingEndpoint(BaseHTTPRequestHandler):
    """`POST /refresh` with `{"refreshToken": t}`: 200 and a new token if `t` is live, else 401; a token works once,
    as with rotation on. The request numbered `stall_at` is answered after `stall_seconds`."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.count += 1
            number = server.count
            live = server.live.pop(body.get("refreshToken"), False)
            token = f"t{number}.x-y_z"
            if live:
                server.live[token] = True
        if number == server.stall_at:
            time.sleep(server.stall_seconds)
        answer = json.dumps({"status": 200, "refreshToken": token} if live else {"status": 401}).encode()
        self.send_response(200 if live else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RotatingEndpoint)
    server.lock, server.count, server.live, server.stall_at, server.stall_seconds = threading.Lock(), 0, {}, 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def chained(server, token):
    server.live[token] = True
    return Request("POST", "/refresh", json.dumps({"refreshToken": token}), {"Content-Type": "application/json"},
                   chain="refreshToken", token=token)


def test_wrk_connections_chain_the_tokens_they_are_handed(endpoint):
    base = f"http://127.0.0.1:{endpoint.server_port}"
    report = wrk.run(base, [[chained(endpoint, "first.a")], [chained(endpoint, "first.b")]], 1, 200)
    assert report["requests"] > 2
    assert report["statuses"] == {"200": report["requests"]}
    assert (report["unexpected_status"], report["chain_breaks"]) == (0, 0)


def test_the_open_loop_chains_tokens_and_counts_a_stall_from_each_request_s_intended_start(endpoint):
    endpoint.stall_at, endpoint.stall_seconds = 5, 0.3
    base = f"http://127.0.0.1:{endpoint.server_port}"
    # One slot, 100 requests a second for 0.5 s: the 5th answer takes 300 ms, so the requests meant to start in
    # the 100 ms after it (#6-#15) end at least 200 ms after their intended start, whatever else the machine does.
    report = openloop.run(base, [chained(endpoint, "first.a")], 100, 0.5, 200)
    assert report["requests"] == 50
    assert report["statuses"] == {"200": 50}
    assert (report["unexpected_status"], report["socket_errors"], report["chain_breaks"]) == (0, 0, 0)
    assert report["latency_ms"]["p90"] >= 200


def test_an_open_loop_chain_that_is_refused_is_counted_as_broken(endpoint):
    base = f"http://127.0.0.1:{endpoint.server_port}"
    stale = Request("POST", "/refresh", json.dumps({"refreshToken": "never.issued"}),
                    {"Content-Type": "application/json"}, chain="refreshToken", token="never.issued")
    report = openloop.run(base, [stale], 20, 0.25, 200)
    assert report["statuses"] == {"401": 5}
    assert report["bodies"] == {'401 {"status": 401}': 5}
    assert (report["unexpected_status"], report["chain_breaks"]) == (5, 5)


@pytest.mark.parametrize("token, body", [
    ("has space", '{"refreshToken": "has space"}'),
    ("abc", '{"refreshToken": "xyz"}'),
    ("a", '{"refreshToken": "a", "again": "a"}'),
])
def test_a_chained_request_needs_its_token_once_in_its_body(token, body):
    with pytest.raises(ValueError, match="must carry its token once"):
        Request("POST", "/refresh", body, chain="refreshToken", token=token)
