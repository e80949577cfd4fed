"""Fixtures: `app`/`client` with a mocked Keycloak address for the mapping tables (`upstream` mocks it), sockets
that never answer, and the real Keycloak of the local stack (`make keycloak`) with users made and removed per test
for everything else. No test sees the developer's own settings: every variable the gateway reads is unset."""

import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import responses
from keycloak import KeycloakAdmin, KeycloakOpenIDConnection

from gateway import create_app
from gateway.config import NAMES

ROOT = Path(__file__).resolve().parent.parent
MOCK_URL = "http://keycloak.test/auth/"
LIVE_URL = os.environ.get("TEST_KEYCLOAK_URL", "http://localhost:8180/auth/")
DEV_SECRET = "edmportal-dev-secret"
ISSUER = "http://localhost:8180/auth/realms/edm"
TOKEN_URL = f"{LIVE_URL}realms/edm/protocol/openid-connect/token"
KEYCLOAK_VERSION = (ROOT / "keycloak" / "VERSION").read_text().strip()

# Chromium, the portal's static site, the gateway under gunicorn; Redis, the echo upstream and BFF gateways; Sentinels
pytest_plugins = ["tests.browser", "tests.bff", "tests.sentinel"]


def mock_config(**overrides):
    """Settings for an app whose Keycloak is mocked with `responses` at MOCK_URL."""
    return {"KEYCLOAK_URL": MOCK_URL, "KEYCLOAK_PUBLIC_URL": "http://localhost:8180/auth/",
            "KEYCLOAK_CLIENT_SECRET": "mock-secret", "KEYCLOAK_TIMEOUT": "2", **overrides}


def live_config(**overrides):
    """Settings for an app that calls the real Keycloak of the local stack."""
    return {"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "KEYCLOAK_TIMEOUT": "5", **overrides}


# Everything logged during the run (this process's records, as the JSON handler writes them, and the output of
# every gunicorn the suite starts), and the secrets the suite used: checked against each other when the run ends.
LOGGED = []
SUITE_SECRETS = {DEV_SECRET, "mock-secret"}
TOKEN_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


class _Sink(logging.Handler):
    def emit(self, record):
        LOGGED.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def logged_lines():
    from gateway.logs import JsonFormatter

    sink = _Sink(level=logging.DEBUG)
    sink.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(sink)
    yield LOGGED
    logging.getLogger().removeHandler(sink)


def find_leaks(lines, secrets):
    """The lines that hold a token-shaped string or one of `secrets`."""
    return [line for line in lines if TOKEN_SHAPE.search(line) or any(s in line for s in secrets)]


def pytest_sessionfinish(session):
    """The suite-wide check: no line logged during the run holds a password, a token or the client secret used."""
    leaks = find_leaks(LOGGED, SUITE_SECRETS)
    if leaks:
        session.config.get_terminal_writer().line(
            f"SECRETS IN LOGS: {len(leaks)} logged lines hold a password, token or secret of the suite, e.g. "
            f"{leaks[0][:300]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    """Exported KEYCLOAK_*/GATEWAY_* (and proxy, CA bundle, runtime directory, metrics directory) variables never
    change an outcome: the run starts without any of them, and tests that mean one pass it explicitly. Before the
    test modules are collected: prometheus_client picks its mode when a module first imports it."""
    for name in NAMES:
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory, monkeypatch):
    """Each test's gateways keep their host state (the store's file, the login turns' lock files) in a directory of
    the test's own: a refresh token spent, a session ended or a logout token seen in one test is never another's."""
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def app():
    return create_app(mock_config())


@pytest.fixture
def upstream():
    """The mocked Keycloak at MOCK_URL: every answer a test adds must be asked for."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def silent_url():
    """The URL of a socket that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/auth/"


class HangingUpServer:
    """A real socket that reads each request and closes the connection without an answer, counting them."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/auth/"
        self.connections = 0
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while self._running:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            with connection:
                self.connections += 1
                connection.settimeout(1)
                try:
                    connection.recv(65536)
                except OSError:
                    pass

    def close(self):
        self._running = False
        self._thread.join()
        self.socket.close()


@pytest.fixture
def keycloak_relay():
    """A TcpRelay to the shared Keycloak, started; its `url` is Keycloak's base URL through it."""
    relay = TcpRelay(("127.0.0.1", 8180)).start()
    relay.url = f"http://127.0.0.1:{relay.port}/auth/"
    yield relay
    relay.stop()


@pytest.fixture
def hanging_up_server():
    server = HangingUpServer()
    yield server
    server.close()


@pytest.fixture
def client(app):
    return app.test_client()


REAL_KEYCLOAK_FIXTURES = {"keycloak_realm", "keycloak_relay"}  # kc and live_app come through keycloak_realm


def pytest_collection_modifyitems(items):
    for item in items:
        if REAL_KEYCLOAK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.keycloak)


def pytest_terminal_summary(terminalreporter):
    fuzzed = getattr(pytest, "fuzzed_requests", {})
    if fuzzed:
        kinds = "; ".join(f"{kind}: {count}" for kind, count in sorted(fuzzed.items()))
        terminalreporter.write_line(f"fuzzing: {sum(fuzzed.values())} generated requests ({kinds})")
    ran = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
           if r.when == "call" and "keycloak" in r.keywords]
    if ran:
        version = getattr(pytest, "keycloak_server_version", "?")
        terminalreporter.write_line(
            f"real Keycloak: server version {version} (pinned {KEYCLOAK_VERSION}); {len(ran)} tests ran against it"
        )


class RealKeycloak:
    """The real realm `edm`, driven through its admin API as the realm administrator `edmadmin`."""

    def __init__(self):
        connection = KeycloakOpenIDConnection(
            server_url=LIVE_URL, username="edmadmin", password="edmadmin", realm_name="edm",
            user_realm_name="edm", client_id="admin-cli", timeout=10,
        )
        self.admin = KeycloakAdmin(connection=connection)
        self.version = self.admin.get_server_info()["systemInfo"]["version"]
        self._created = []

    def create_user(self, prefix="t", password=None, enabled=True, complete=True, actions=()):
        """A fresh user of the realm (alphanumeric name, a password of its own unless given), removed after the
        test; its password joins the secrets that no log line of the suite may hold."""
        username = f"{prefix}{secrets.token_hex(6)}"
        password = password or f"Pw-{secrets.token_hex(8)}"
        SUITE_SECRETS.add(password)
        payload = {"username": username, "enabled": enabled, "requiredActions": list(actions),
                   "credentials": [{"type": "password", "value": password, "temporary": False}]}
        if complete:
            payload.update(email=f"{username}@example.com", emailVerified=True, firstName="Test", lastName="User")
        user_id = self.admin.create_user(payload)
        self._created.append(user_id)
        return User(user_id, username, password)

    def password_grant(self, username, password):
        """A grant straight to Keycloak, bypassing the gateway."""
        return requests.post(TOKEN_URL, data={"grant_type": "password", "client_id": "edmportal",
                                              "client_secret": DEV_SECRET, "username": username,
                                              "password": password}, timeout=10)

    def lock(self, user):
        """Lock `user` the way an attacker would: wrong passwords until brute-force detection steps in (two
        within its one-second quick-login window usually; its failure factor of 30 at the latest)."""
        for attempt in range(40):
            self.password_grant(user.username, f"wrong-password-{attempt}")
            deadline = time.monotonic() + 0.5  # Keycloak records brute-force failures asynchronously
            while time.monotonic() < deadline:
                if self.admin.get_bruteforce_detection_status(user.id)["disabled"]:
                    return
                time.sleep(0.05)
        raise AssertionError(f"{user.username} was not locked by 40 wrong passwords")

    def cleanup(self):
        for user_id in self._created:
            self.admin.delete_user(user_id)
        self._created.clear()


class User:
    def __init__(self, id, username, password):
        self.id, self.username, self.password = id, username, password


@pytest.fixture(scope="session")
def keycloak_realm():
    try:
        realm = RealKeycloak()
    except Exception as exc:  # noqa: BLE001 - turn any start-up failure into one clear instruction
        pytest.fail(f"the real Keycloak at {LIVE_URL} is not usable ({exc!r}); start it with `make keycloak`",
                    pytrace=False)
    pytest.keycloak_server_version = realm.version
    return realm


@pytest.fixture
def kc(keycloak_realm):
    """The real Keycloak; users created through it are removed after the test."""
    yield keycloak_realm
    keycloak_realm.cleanup()


@pytest.fixture
def live_app(kc):
    return create_app(live_config())


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """The gateway under gunicorn with the settings shipped in the package, as `make run` starts it."""

    def __init__(self, env, cwd=ROOT, executable=None, args=(), port=None, command=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # `command` starts it another way (e.g. `edm-gateway serve`); the bind and `args` follow it
        command = [*(command or [executable or os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                                 "-c", "python:gateway.gunicorn_conf"]), "--bind", f"127.0.0.1:{self.port}", *args]
        # A file, not a pipe: a long test's access log would fill a pipe and stall gunicorn.
        self.output = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env},
                                        stdout=self.output, stderr=subprocess.STDOUT, text=True)

    def log(self):
        """What gunicorn and the gateway wrote so far."""
        self.output.seek(0)
        return self.output.read()

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.log()}")
            try:
                requests.get(self.url + "/healthz", timeout=2)
                return self
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a worker still booting
                time.sleep(0.1)
        raise AssertionError("gunicorn did not start in time")

    def stop(self):
        """Stop it; its output (every line it logged), also kept for the suite-wide secrets check."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = self.log()
        LOGGED.extend(output.splitlines())
        return output


class TcpRelay:
    """A test-owned TCP relay on a loopback port, forwarding to `target` (the shared Keycloak): stopping it makes
    "Keycloak stopped" real for a gateway that calls Keycloak through it (connections refused, those open cut)
    without touching the Keycloak other tests and engineers use; starting it again on the same port is "Keycloak
    back"."""

    def __init__(self, target):
        self.target = target
        self.port = free_port()
        self.listener = None
        self._connections = set()
        self._lock = threading.Lock()

    def start(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        """Refuse new connections and cut the open ones, as a stopped server does."""
        # shutdown, not only close: a close leaves the socket listening while the accept thread is blocked in it.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()


class RedisServer:
    """A private `redis-server` (Debian's) on a free loopback port, with nothing kept on disk: start, stop and
    start again on the same port to make a Redis outage real. Never the stack's own Redis."""

    def __init__(self, directory):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server (Debian package redis-server) is not installed; run `make test`, which "
                        "installs it", pytrace=False)
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory, "--logfile", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def flush(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private Redis for the run's tests that only need one; emptied before each test that uses it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    redis_server.flush()
    return redis_server.url


class Signer:
    """A stand-in realm key for the mocked Keycloak: publishes a JWKS and signs access tokens with it."""

    def __init__(self, kid="mock-key"):
        from jwcrypto import jwk

        self.key = jwk.JWK.generate(kty="RSA", size=2048, kid=kid, use="sig", alg="RS256")
        self.jwks = {"keys": [self.key.export_public(as_dict=True)]}

    def token(self, **claims):
        from jwcrypto import jwt

        now = int(time.time())
        body = {"exp": now + 300, "iat": now, "iss": ISSUER, "sub": "mock-user-id", "typ": "Bearer",
                "azp": "edmportal", "preferred_username": "mockuser", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        token = jwt.JWT(header={"alg": "RS256", "typ": "JWT", "kid": self.key.kid}, claims=body)
        token.make_signed_token(self.key)
        return token.serialize()


@pytest.fixture(scope="session")
def signer():
    return Signer()
