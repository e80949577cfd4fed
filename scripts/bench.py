"""Benchmark, run by hand against the local stack (`make keycloak` first): `.venv/bin/python scripts/bench.py`.

Starts the gateway under gunicorn with the repository's config, then for each kind of request measures
throughput and latency through the gateway and, where there is one, straight to Keycloak, so the gateway's own
cost shows; finally the memory of the gateway's processes. Prints figures; asserts nothing.
"""

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keycloak import KeycloakAdmin, KeycloakOpenIDConnection  # noqa: E402

KC_HOST, KC_PORT = "127.0.0.1", 8180
SECRET = "edmportal-dev-secret"
TOKEN_PATH = "/auth/realms/edm/protocol/openid-connect/token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(host, port, make_request, concurrency, seconds):
    """Keep-alive clients in threads for `seconds`; returns (requests per second, latencies in ms, failures)."""
    latencies, failures, stop = [], [0], time.monotonic() + seconds
    lock = threading.Lock()

    def worker(index):
        connection = http.client.HTTPConnection(host, port, timeout=30)
        mine, failed, n = [], 0, 0
        while time.monotonic() < stop:
            method, path, body, headers = make_request(index, n)
            n += 1
            started = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            failed += response.status != 200
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    began = time.monotonic()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return len(latencies) / (time.monotonic() - began), latencies, failures[0]


def report(label, result):
    rate, latencies, failures = result
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0
    print(f"{label:48s} {rate:8.0f}/s  p50 {statistics.median(latencies):6.1f} ms  p99 {p99:6.1f} ms"
          f"  n={len(latencies)} failed={failures}")


def rss_mib(pid):
    """Resident memory of a process and its children, in MiB."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
                    .stdout.split()]
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as status:
            total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return total / 1024, len(pids)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()

    admin = KeycloakAdmin(connection=KeycloakOpenIDConnection(
        server_url=f"http://localhost:{KC_PORT}/auth/", username="edmadmin", password="edmadmin",
        realm_name="edm", user_realm_name="edm", client_id="admin-cli", timeout=10))
    users = []
    for _ in range(16):
        name = f"bench{secrets.token_hex(5)}"
        users.append((admin.create_user({
            "username": name, "enabled": True, "email": f"{name}@example.com", "emailVerified": True,
            "firstName": "Bench", "lastName": "User",
            "credentials": [{"type": "password", "value": "password123", "temporary": False}]}), name))

    port = free_port()
    env = {**os.environ, "KEYCLOAK_CLIENT_SECRET": SECRET, "GATEWAY_BIND": f"127.0.0.1:{port}"}
    gunicorn = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "gateway:create_app()"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"gateway: gunicorn, {os.environ.get('GATEWAY_WORKERS', 2)} workers x "
              f"{os.environ.get('GATEWAY_THREADS', 8)} threads; load: Python keep-alive clients on the same "
              f"{os.cpu_count()} cores; {args.seconds:.0f} s per row\n")
        json_headers = {"Content-Type": "application/json"}
        form_headers = {"Content-Type": "application/x-www-form-urlencoded"}

        # Logins: 4 clients, client i on users i, i+4, i+8, i+12, so that no two grants of one user overlap
        # (Keycloak refuses those) and the direct rows measure Keycloak, not its guard.
        def login_via_gateway(i, n):
            _, name = users[i + 4 * (n % 4)]
            return "POST", "/api/login", json.dumps({"username": name, "password": "password123"}), json_headers

        def grant_direct(i, n):
            _, name = users[i + 4 * (n % 4)]
            body = urlencode({"grant_type": "password", "client_id": "edmportal", "client_secret": SECRET,
                              "username": name, "password": "password123", "scope": "profile email"})
            return "POST", TOKEN_PATH, body, form_headers

        report("password grant, straight to Keycloak (c=4)", run_load(KC_HOST, KC_PORT, grant_direct, 4, args.seconds))
        report("POST /api/login through the gateway (c=4)",
               run_load("127.0.0.1", port, login_via_gateway, 4, args.seconds))

        sessions = []
        for _, name in users[:8]:
            connection = http.client.HTTPConnection("127.0.0.1", port)
            connection.request("POST", "/api/login", json.dumps({"username": name, "password": "password123"}),
                               json_headers)
            sessions.append(json.loads(connection.getresponse().read()))
        refresh = [s["refreshToken"] for s in sessions]

        def refresh_direct(i, n):
            body = urlencode({"grant_type": "refresh_token", "client_id": "edmportal", "client_secret": SECRET,
                              "refresh_token": refresh[i]})
            return "POST", TOKEN_PATH, body, form_headers

        def refresh_via_gateway(i, n):
            return "POST", "/api/refresh", json.dumps({"refreshToken": refresh[i]}), json_headers

        report("refresh grant, straight to Keycloak (c=8)", run_load(KC_HOST, KC_PORT, refresh_direct, 8, args.seconds))
        report("POST /api/refresh through the gateway (c=8)",
               run_load("127.0.0.1", port, refresh_via_gateway, 8, args.seconds))

        def me(i, n):
            return "GET", "/api/me", None, {"Authorization": f"Bearer {sessions[i]['accessToken']}"}

        report("GET /api/me, verified locally (c=8)", run_load("127.0.0.1", port, me, 8, args.seconds))
        report("GET /healthz (c=8)", run_load("127.0.0.1", port, lambda i, n: ("GET", "/healthz", None, {}), 8,
                                              args.seconds))
        mib, processes = rss_mib(gunicorn.pid)
        print(f"\nmemory of the gateway after the run: {mib:.0f} MiB resident in {processes} processes "
              f"(master and workers)")
    finally:
        gunicorn.terminate()
        gunicorn.wait()
        for user_id, _ in users:
            admin.delete_user(user_id)


if __name__ == "__main__":
    main()
