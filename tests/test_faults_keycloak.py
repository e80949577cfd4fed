"""Faults made real while a bounded login load runs: Redis stopped and started again, Keycloak cut off and back
(through a test-owned relay, never the shared Keycloak itself), and a Keycloak that accepts and never answers. The
gateway answers the documented strings quickly throughout and recovers by itself, without a restart."""

import threading
import time

import pytest
import requests

from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn, RedisServer, TcpRelay
from tests.loads import LoginLoad, login

UNAVAILABLE = "code=503, message=authentication service unavailable"
TIMEOUT = 5.0  # KEYCLOAK_TIMEOUT of these gateways (the default)


def gateway(tmp_path, **env):
    base = {"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "KEYCLOAK_TIMEOUT": str(TIMEOUT),
            "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "8", "XDG_RUNTIME_DIR": str(tmp_path),
            "GATEWAY_LIMIT_PER_ADDRESS": "off", "GATEWAY_LIMIT_PER_USERNAME": "off"}
    return Gunicorn({**base, **env}).wait_ready()


def succeeds_within(url, user, seconds):
    """How long it took until a login of `user` succeeded; fails the test after `seconds`."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if login(url, user).status == 200:
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"no successful login within {seconds} s")


@pytest.fixture
def users(kc):
    """Four users for the load, and a fifth whose login tells when the gateway has recovered."""
    return [kc.create_user() for _ in range(5)]


def test_redis_stopped_while_logins_run_then_back_without_a_restart(tmp_path, kc, users):
    redis = RedisServer(tmp_path / "redis").start()
    server = gateway(tmp_path, GATEWAY_REDIS_URL=redis.url, GATEWAY_LIMIT_PER_ADDRESS="1000/minute",
                     GATEWAY_LIMIT_PER_USERNAME="10/minute")
    load = LoginLoad(server.url, users[:4])
    try:
        load.start()
        time.sleep(1.5)
        redis.stop()
        stopped_at = time.monotonic()
        time.sleep(2)
        assert requests.get(server.url + "/readyz", timeout=5).json() == "code=503, message=redis unavailable"
        redis.start()  # same port, empty: counts and turns start afresh
        back_at = time.monotonic()
        recovered = succeeds_within(server.url, users[4], 5)
        time.sleep(1)
        assert requests.get(server.url + "/readyz", timeout=5).json() == {"status": 200, "message": "ready"}
        pid_before = server.process.pid
    finally:
        answers = load.stop()
        redis.stop()
        log = server.stop()
    outcomes = {(a.status, a.body if a.status != 200 else "tokens") for a in answers}
    odd = [(a.started - stopped_at, a.seconds, a.body) for a in answers if a.status not in (200, 503)]
    assert outcomes <= {(200, "tokens"), (503, UNAVAILABLE)}, (odd, back_at - stopped_at)
    during = [a for a in answers if stopped_at + 0.1 < a.started and a.started + a.seconds < back_at]
    assert during and all(a.status == 503 for a in during)
    assert max(a.seconds for a in answers) < TIMEOUT + 0.5
    assert any(a.status == 200 and a.started > back_at for a in answers)
    assert server.process.pid == pid_before and "Traceback" not in log
    print(f"\nRedis outage: {len(answers)} logins, {sum(a.status == 503 for a in answers)} answered 503, slowest "
          f"{max(a.seconds for a in answers):.2f} s; a login succeeded {recovered:.2f} s after Redis was back")


def test_keycloak_stopped_while_logins_run_then_back(tmp_path, kc, users):
    """Keycloak "stops" by the relay the gateway calls it through being stopped: new connections are refused and
    open ones cut, exactly what the gateway sees of a stopped Keycloak. The shared Keycloak itself runs on."""
    relay = TcpRelay(("127.0.0.1", 8180)).start()
    server = gateway(tmp_path, KEYCLOAK_URL=f"http://127.0.0.1:{relay.port}/auth/",
                     KEYCLOAK_PUBLIC_URL="http://localhost:8180/auth/")
    load = LoginLoad(server.url, users[:4])
    try:
        load.start()
        time.sleep(1.5)
        relay.stop()
        stopped_at = time.monotonic()
        time.sleep(2)
        relay.start()
        back_at = time.monotonic()
        recovered = succeeds_within(server.url, users[4], 5)
        time.sleep(1)
    finally:
        answers = load.stop()
        relay.stop()
        log = server.stop()
    outcomes = {(a.status, a.body if a.status != 200 else "tokens") for a in answers}
    assert outcomes <= {(200, "tokens"), (503, UNAVAILABLE)}, outcomes
    during = [a for a in answers if stopped_at + 0.1 < a.started and a.started + a.seconds < back_at]
    assert during and all(a.status == 503 for a in during)
    assert any(a.status == 200 and a.started > back_at for a in answers)
    assert "Traceback" not in log
    print(f"\nKeycloak outage: {len(answers)} logins, {sum(a.status == 503 for a in answers)} answered 503; a login "
          f"succeeded {recovered:.2f} s after it was back")


def test_a_hung_keycloak_times_out_while_healthz_answers_at_once(tmp_path, silent_url):
    server = gateway(tmp_path, KEYCLOAK_URL=silent_url, KEYCLOAK_PUBLIC_URL="http://localhost:8180/auth/",
                     KEYCLOAK_TIMEOUT="1")
    try:
        answers = []
        hung = threading.Thread(target=lambda: answers.append(
            login(server.url, type("U", (), {"username": "ahmadakbar", "password": "password"}))))
        hung.start()
        time.sleep(0.3)
        started = time.monotonic()
        health = requests.get(server.url + "/healthz", timeout=5)
        health_seconds = time.monotonic() - started
        hung.join(10)
    finally:
        server.stop()
    assert (health.status_code, health_seconds < 0.2) == (200, True)
    (answer,) = answers
    assert (answer.status, answer.body) == (504, "code=504, message=authentication service timed out")
    assert 1.0 <= answer.seconds < 1.5
