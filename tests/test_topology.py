"""The production topology run for real, without Docker (tests/topology.py): first that every process runs what
docker-compose.yml describes, only addresses and ports changed; then its faults under a bounded mixed load through
nginx, each test printing its figures in one line. The tests run in this order on one stack: each leaves it whole."""

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

import redis
from gateway.config import VARIABLES
from tests.bff import LoopbackBrowser, bff_login
from tests.compose_env import compose_file, resolve_defaults, service_environment
from tests.conftest import LOGGED, ROOT, SUITE_SECRETS
from tests.topology import (
    CACHE,
    GATEWAYS,
    NGINX_CONF,
    SENTINEL_CONF,
    SENTINELS,
    Ports,
    Stack,
    keycloak_build_options,
    remove_stack,
    started_at,
)
from tests.topology_load import (
    TIMED_OUT,
    UNAVAILABLE,
    UPSTREAM_ERROR,
    MixedLoad,
    TopologyRealm,
    by_status,
    client_addresses,
    failures,
    session_from,
)

LOOPBACK = {"127.0.0.1", "localhost"}


def remove_abandoned_stacks():
    """Stacks of earlier suite runs whose pytest is gone (killed before its cleanup): their servers end."""
    for home in (CACHE / "topology").glob("suite-*"):
        pid = home.name.removeprefix("suite-")
        if not (pid.isdigit() and started_at(int(pid))):
            remove_stack(home)


def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def stack(figures):
    """The whole topology on free loopback ports, started once for this module and removed after it, also when a
    test or the start fails, and when the run is stopped with SIGTERM (as `timeout` and CI stop it)."""
    remove_abandoned_stacks()
    previous = signal.signal(signal.SIGTERM, interrupted)
    topology = Stack(CACHE / "topology" / f"suite-{os.getpid()}", Ports.free())
    SUITE_SECRETS.add(service_environment(GATEWAYS[0])["GATEWAY_SESSION_SECRET"])
    try:
        topology.start()
        figures("start", **{what.replace(" ", "_"): f"{seconds} s" for what, seconds in topology.timings.items()})
        yield topology
    finally:
        try:
            topology.stop()
        finally:
            kept = CACHE / "topology" / "last-suite-logs"  # outside pytest's temporary directories, which rotate
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(topology.home / "logs", kept)
            for name in GATEWAYS:  # for the suite-wide check that no line holds a password, token or secret
                LOGGED.extend(topology.logs(name).splitlines())
            print(f"topology: the stack's logs are kept in {kept}")
            remove_stack(topology.home)
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def realm(stack):
    return TopologyRealm(stack.keycloak_url)


@pytest.fixture(scope="module")
def figures(request):
    """Print one line of figures on the terminal, whatever pytest captures."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def show(name, **values):
        line = f"topology {name}: " + "; ".join(f"{key.replace('_', ' ')} {value}" for key, value in values.items())
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", flush=True)

    return show


def proc(pid, what):
    return Path(f"/proc/{pid}/{what}").read_bytes().split(b"\0")


def cmdline(pid):
    return [part.decode() for part in proc(pid, "cmdline") if part]


def environ(pid):
    return dict(part.decode().split("=", 1) for part in proc(pid, "environ") if b"=" in part)


# What may differ between compose and the stack: addresses (`host:port`, bare IPv4 addresses and `0.0.0.0`) and
# listen ports. Both sides are reduced to their shape, without tests/topology.py's own relocation.
HOST_PORT = re.compile(r"(?<![\w.-])([A-Za-z0-9][\w.-]*):(\d+)(?![\w.-])")
IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.])")
PORT_FLAG = re.compile(r"^(--(?:http-port|http-management-port|cache-embedded-network-bind-port|port))(=|$)")


def shape(values):
    """`values` (arguments, or one value) with every address and listen port replaced by a placeholder."""
    single = isinstance(values, str)
    shaped, follows = [], []
    for value in [values] if single else values:
        if follows:
            shaped.append(follows.pop(0))
            continue
        if value == "--replicaof":
            follows = ["<host>", "<port>"]
        value = IPV4.sub("<ip>", HOST_PORT.sub("<address>", value))
        if (match := PORT_FLAG.match(value)) and match.group(2) == "=":
            value = f"{match.group(1)}=<port>"
        if PORT_FLAG.match(value) and "=" not in value:
            follows = ["<port>"]
        shaped.append(value)
    return shaped[0] if single else shaped


def hosts_in(values):
    """Every host named in `values`, by address or `host:port`."""
    return {host for value in values for host in [*HOST_PORT.findall(value), *IPV4.findall(value)]
            for host in ([host[0]] if isinstance(host, tuple) else [host])}


def replicaof_host(args):
    return [args[args.index("--replicaof") + 1]] if "--replicaof" in args else []


def test_keycloak_is_the_maven_distribution_built_with_compose_build_options(stack):
    assert (stack.keycloak.distribution / "edm-build-options").read_text() == " ".join(
        keycloak_build_options(ROOT / "keycloak" / "Dockerfile"))
    shown = subprocess.run([str(stack.keycloak.distribution / "bin" / "kc.sh"), "show-config"], capture_output=True,
                           text=True, timeout=120).stdout
    persisted = dict(re.findall(r"kc\.([\w-]+) =\s+(\S+) \(Persisted\)", shown))
    assert persisted == {"db": "postgres", "health-enabled": "true", "http-relative-path": "/auth", "optimized": "true"}
    assert "Profile prod activated" in stack.logs("keycloak")
    discovery = requests.get(f"{stack.keycloak_url}realms/edm/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == f"http://localhost:{stack.plan.ports['keycloak']}/auth/realms/edm"


def test_keycloak_runs_compose_command_and_environment(stack):
    compose = compose_file()["services"]["keycloak"]
    argv = cmdline(stack.keycloak.process.pid)
    assert Path(argv[1]).name == "kc.sh"
    expected = [resolve_defaults(part) for part in compose["command"]]
    assert shape(argv[2:]) == shape(expected)
    assert hosts_in(argv[2:]) <= LOOPBACK, argv
    env = environ(stack.keycloak.process.pid)
    for name, value in service_environment("keycloak").items():
        assert shape(env[name]) == shape(value), name
        assert hosts_in([env[name]]) <= LOOPBACK, (name, env[name])
    assert env["EDM_BACKCHANNEL_LOGOUT_URL"] == f"{stack.url}/backchannel-logout"


def test_gateways_run_the_image_command_with_compose_environment(stack):
    dockerfile_cmd = re.search(r'^CMD (\[.*\])', (ROOT / "Dockerfile").read_text(), re.MULTILINE).group(1)
    image_command = json.loads(dockerfile_cmd)
    for name in GATEWAYS:
        pid = stack.processes[name].pid
        argv = cmdline(pid)
        assert Path(argv[1]).name == image_command[0] and argv[2:] == image_command[1:]
        env = environ(pid)
        compose_env = service_environment(name)
        for variable, value in compose_env.items():
            assert shape(env[variable]) == shape(value), variable
            assert hosts_in([env[variable]]) <= LOOPBACK, (variable, env[variable])
        # the variables the gateway reads and compose does not set are unset, as in the image
        extra = {v for v in VARIABLES if v in env and v not in compose_env}
        assert extra == {"TMPDIR"}, extra  # a container's private /tmp
    first, second = (environ(stack.processes[name].pid) for name in GATEWAYS)
    assert {k: v for k, v in first.items() if k not in ("GATEWAY_BIND", "TMPDIR")} == \
        {k: v for k, v in second.items() if k not in ("GATEWAY_BIND", "TMPDIR")}


def test_redis_and_sentinels_run_compose_commands_and_the_shared_sentinel_file(stack):
    services = compose_file()["services"]
    for name in ("redis-primary", "redis-replica", *SENTINELS):
        argv = stack.processes[name].argv  # Redis rewrites its /proc cmdline into a title
        expected = [resolve_defaults(str(part)) for part in services[name]["command"]]
        # the servers' own additions: loopback only, a data directory of their own
        assert argv[-4:-2] == ["--bind", "127.0.0.1"] and argv[-2] == "--dir"
        ran = argv[1:-4]
        if name in SENTINELS:
            assert Path(ran[0]).read_text().startswith(stack.plan.sentinel_conf()[:40])
            ran, expected = ran[1:], expected[2:]  # the copy of redis/sentinel.conf, compose's /data/sentinel.conf
        else:
            expected = expected[1:]
        assert shape(ran) == shape(expected), name
        assert set(replicaof_host(ran)) <= LOOPBACK
    for name in ("redis-primary", "redis-replica"):
        server = redis.Redis(port=stack.plan.ports[name])
        assert (server.config_get("save"), server.config_get("appendonly")) == ({"save": ""}, {"appendonly": "no"})
    template = SENTINEL_CONF.read_text().splitlines()
    relocated = stack.plan.sentinel_conf().splitlines()
    changed = [(a, b) for a, b in zip(template, relocated, strict=True) if a != b]
    assert len(template) == len(relocated) and [a for a, _ in changed] == ["sentinel monitor edm redis-primary 6379 2"]
    assert changed[0][1] == f"sentinel monitor edm 127.0.0.1 {stack.plan.ports['redis-primary']} 2"
    primary = redis.Redis(port=stack.plan.ports[SENTINELS[0]]).execute_command("SENTINEL", "MASTER", "edm")
    primary = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
               for k, v in (zip(primary[::2], primary[1::2], strict=True) if isinstance(primary, list)
                            else primary.items())}
    assert (primary["quorum"], primary["down-after-milliseconds"], primary["failover-timeout"],
            primary["num-other-sentinels"], primary["num-slaves"]) == ("2", "5000", "30000", "2", "1")


def test_nginx_loads_nginx_gateway_conf_itself_only_addresses_changed(stack):
    directory = stack.home / "nginx"
    loaded = subprocess.run(["nginx", "-T", "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e",
                             str(stack.home / "logs" / "nginx-error.log")], capture_output=True, text=True, timeout=30)
    assert loaded.returncode == 0, loaded.stderr
    original = NGINX_CONF.read_text().splitlines()
    included = (stack.home / "nginx" / "conf.d" / "default.conf").read_text().splitlines()
    assert "\n".join(included) in loaded.stdout
    changed = [(a, b) for a, b in zip(original, included, strict=True) if a != b]
    assert len(original) == len(included)
    listen = re.compile(r"listen\s+\S+;")
    assert [shape(listen.sub("listen <address>;", a)) for a, _ in changed] == [
        shape(listen.sub("listen <address>;", b)) for _, b in changed]
    assert [a.split()[0] for a, _ in changed] == ["server", "server", "listen"]
    assert hosts_in([b for _, b in changed]) <= LOOPBACK


def test_compose_answers_through_nginx(stack, realm):
    user = realm.create_user()
    url = stack.url
    login = requests.post(f"{url}/api/login", json={"username": user.username, "password": user.password},
                          timeout=30)
    assert login.status_code == 200 and list(login.json()) == [
        "status", "message", "accessToken", "refreshToken", "expiresIn"]
    assert login.json()["message"] == user.id
    answers = {
        "unknown user": requests.post(f"{url}/api/login", json={"username": "nosuchuser42", "password": "password"}),
        "bad payload": requests.post(f"{url}/api/login", json={"username": "ab"}),
        "unknown path": requests.get(f"{url}/nowhere"),
    }
    assert {k: (r.status_code, r.json()) for k, r in answers.items()} == {
        "unknown user": (400, "code=404, message=username not found"),
        "bad payload": (400, "code=400, message=payload is unknown"),
        "unknown path": (404, "code=404, message=not found"),
    }
    refreshed = requests.post(f"{url}/api/refresh", json={"refreshToken": login.json()["refreshToken"]}, timeout=30)
    me = requests.get(f"{url}/api/me", headers={"Authorization": f"Bearer {refreshed.json()['accessToken']}"})
    assert (me.status_code, me.json()["user"]["username"]) == (200, user.username)
    browser = LoopbackBrowser()
    assert bff_login(browser, url, user).status_code == 302
    answer = browser.get(f"{url}/bff/user", headers={"X-CSRF": "1"})
    assert (answer.status_code, answer.json()["user"]["username"]) == (200, user.username)
    assert requests.get(f"{url}/readyz", timeout=10).json() == {"status": 200, "message": "ready"}


def test_keycloak_sends_back_channel_logouts_to_the_gateways_through_nginx(stack, realm):
    """An admin's "Sign out" in the topology's Keycloak reaches a gateway through nginx at the realm file's
    back-channel URL (its placeholder set as compose sets it): the BFF session ends on both gateways."""
    user = realm.create_user()
    browser = LoopbackBrowser()
    assert bff_login(browser, stack.url, user).status_code == 302
    assert browser.get(f"{stack.url}/bff/user", headers={"X-CSRF": "1"}).status_code == 200
    realm.admin.user_logout(user.id)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = browser.get(f"{stack.url}/bff/user", headers={"X-CSRF": "1"})
        if answer.status_code != 200:
            break
        time.sleep(0.1)
    assert (answer.status_code, answer.json()) == (401, "code=401, message=not logged in")
    for name in GATEWAYS:  # whichever gateway nginx sent the logout token to, both refuse the session now
        direct = browser.get(f"{stack.plan.url(name)}/bff/user", headers={"X-CSRF": "1"})  # cookies know no port
        assert (direct.status_code, direct.json()) == (401, "code=401, message=not logged in")
    assert any('"path": "/backchannel-logout"' in stack.logs(name) for name in GATEWAYS)


@pytest.fixture
def load_users(realm):
    return [realm.create_user() for _ in range(3)]


@pytest.fixture
def browsers(stack, realm):
    """Two BFF sessions, logged in through Keycloak's page and the gateways."""
    logged_in = []
    for _ in range(2):
        browser = LoopbackBrowser()
        assert bff_login(browser, stack.url, realm.create_user()).status_code == 302
        logged_in.append(browser)
    return logged_in


def still_logged_in(stack, browsers):
    return sum(browser.get(f"{stack.url}/bff/user", headers={"X-CSRF": "1"}, timeout=30).status_code == 200
               for browser in browsers)


def time_to_login(stack, user, give_up=60):
    """Seconds until a login of `user` through nginx succeeded (infinity after `give_up`), for the figures line
    before the test asserts on it."""
    began = time.monotonic()
    session = session_from(client_addresses(1)[0])
    while time.monotonic() - began < give_up:
        try:
            answer = session.post(f"{stack.url}/api/login", json={"username": user.username,
                                                                  "password": user.password}, timeout=10)
            if answer.status_code == 200:
                return time.monotonic() - began
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return float("inf")


def described(answers, since):
    """Failed answers as a test failure names them: kind, status, body, when (seconds since `since`)."""
    return [(a.kind, a.status, str(a.body)[:80], round(a.started - since, 1), round(a.ended - since, 1))
            for a in failures(answers)]


def between(answers, start, end):
    """The answers to requests that were under way at some time in [start, end]."""
    return [a for a in answers if a.ended >= start and a.started <= end]


def outside(answers, start, end):
    return [a for a in answers if a.ended < start or a.started > end]


def test_keycloak_stopped_and_started_again(stack, realm, load_users, browsers, figures):
    before = realm.create_user()
    issued = requests.post(f"{stack.url}/api/login", json={"username": before.username, "password": before.password},
                           timeout=30).json()["refreshToken"]
    late = realm.create_user()
    load = MixedLoad(stack.url, load_users, browsers).start()
    try:
        load.wait_for_answers(20)
        down = time.monotonic()
        stack.keycloak.stop()
        time.sleep(3)  # answers while it is down
        starting = time.monotonic()
        started = stack.keycloak.start()  # returns once /health/ready answers 200
        ready = time.monotonic()
        recovery = time_to_login(stack, late)
        load.wait_for_answers(len(load.answers) + 20)
    finally:
        answers = load.stop()
    refreshed = requests.post(f"{stack.url}/api/refresh", json={"refreshToken": issued}, timeout=30)
    kept = still_logged_in(stack, browsers)
    figures("keycloak restart", answers=by_status(answers),
            failed_while_stopped=by_status(failures(between(answers, down, starting))),
            failed_while_starting=by_status(failures(between(answers, starting, ready))),
            down_to_ready=f"{ready - down:.1f} s",
            start=f"{started:.1f} s", login_after_ready=f"{recovery:.1f} s", bff_sessions_lost=len(browsers) - kept,
            old_refresh_token=refreshed.status_code)
    assert recovery <= 5, f"the first login succeeded {recovery:.1f} s after Keycloak was ready"
    during = [a.shown for a in failures(between(answers, down, ready + recovery))]
    assert set(during) <= {UNAVAILABLE, TIMED_OUT}, collections.Counter(during)
    assert described(outside(answers, down, ready + recovery), down) == []
    assert refreshed.status_code == 200 and list(refreshed.json())[0] == "status"
    assert kept == len(browsers)


def test_postgres_restarted_under_keycloak(stack, realm, load_users, browsers, figures):
    keycloak_pid = stack.keycloak.process.pid
    late = realm.create_user()
    load = MixedLoad(stack.url, load_users, browsers).start()
    try:
        load.wait_for_answers(20)
        down = time.monotonic()
        stack.postgres.restart()
        back = time.monotonic()
        recovery = time_to_login(stack, late)
        load.wait_for_answers(len(load.answers) + 20)
    finally:
        answers = load.stop()
    kept = still_logged_in(stack, browsers)
    figures("postgres restart", answers=by_status(answers), postgres_down=f"{back - down:.1f} s",
            login_after_postgres=f"{recovery:.1f} s", keycloak_restarted="no" if stack.keycloak.process.pid ==
            keycloak_pid and stack.keycloak.process.running() else "yes", bff_sessions_lost=len(browsers) - kept)
    assert stack.keycloak.process.running() and stack.keycloak.process.pid == keycloak_pid
    assert recovery <= 30, f"the first login succeeded {recovery:.1f} s after PostgreSQL was back"
    during = [a.shown for a in failures(between(answers, down, back + recovery))]
    assert set(during) <= {UNAVAILABLE, TIMED_OUT, UPSTREAM_ERROR}, collections.Counter(during)
    assert described(outside(answers, down, back + recovery), down) == []
    assert kept == len(browsers)


NGINX_TIME = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[error\].*\(104: Connection reset by peer\) while "
                        r"reading response header from upstream.*upstream: \"http://127\.0\.0\.1:(\d+)/")


def reset_in_accept_queue(stack, name, wall_from, wall_to):
    """nginx's resets from gateway `name` between two wall-clock times (seconds), as its error log has them: what
    gunicorn's SIGTERM does to connections still in the listen queue when it closes its socket (the kernel resets
    them after nginx sent the request, and a POST is not retried)."""
    resets = 0
    for line in stack.logs("nginx-error").splitlines():
        if (match := NGINX_TIME.match(line)) and int(match.group(2)) == stack.plan.ports[name]:
            at = time.mktime(time.strptime(match.group(1), "%Y/%m/%d %H:%M:%S"))
            resets += int(wall_from - 1 <= at <= wall_to + 1)
    return resets


def stopped_gracefully(stack, name):
    """SIGTERM to gateway `name`; (seconds it took, the nginx 502s that its listen queue's resets allow)."""
    wall = time.time()
    took = stack.processes[name].stop(signal.SIGTERM)
    return took, reset_in_accept_queue(stack, name, wall, time.time())


def nginx_502s(answers):
    return [a for a in failures(answers) if a.status == 502 and "nginx" in str(a.body)]


def test_a_gateway_stopped_gracefully_while_nginx_sends_it_traffic(stack, load_users, browsers, figures):
    """No request fails but those that gunicorn resets in its listen queue as it closes its socket: nginx's error
    log names each, and there are at most as many as the load has clients."""
    load = MixedLoad(stack.url, load_users, browsers).start()
    try:
        load.wait_for_answers(20)
        stopping = time.monotonic()
        took, resets = stopped_gracefully(stack, "gateway-1")
        load.wait_for_answers(len(load.answers) + 30)  # all on gateway-2 now
        restarted(stack, "gateway-1")
        load.wait_for_answers(len(load.answers) + 20)
    finally:
        answers = load.stop()
    figures("gateway SIGTERM", answers=by_status(answers), stop=f"{took:.1f} s", failed=len(failures(answers)),
            reset_in_gunicorns_listen_queue=resets)
    assert described([a for a in answers if a not in nginx_502s(answers)], stopping) == []
    assert len(nginx_502s(answers)) <= resets <= len(load_users) + len(browsers), described(answers, stopping)
    assert any(a.started > stopping + took for a in answers)


def test_a_gateway_killed_fails_only_what_was_in_flight_on_it_and_nginx_sends_no_login_twice(
        stack, realm, load_users, browsers, figures):
    fresh = [realm.create_user() for _ in range(40)]
    logins = []  # (user, answer) of single logins, each of a user that never logged in before

    def log_in_once():
        session = session_from(client_addresses(1)[0])
        while fresh:
            user = fresh.pop()
            started = time.monotonic()
            try:
                response = session.post(f"{stack.url}/api/login", json={"username": user.username,
                                                                        "password": user.password}, timeout=30)
                logins.append((user, started, time.monotonic(), response.status_code))
            except requests.RequestException as exc:
                logins.append((user, started, time.monotonic(), type(exc).__name__))
            time.sleep(0.05)

    load = MixedLoad(stack.url, load_users, browsers).start()
    single = [threading.Thread(target=log_in_once, daemon=True) for _ in range(2)]
    try:
        load.wait_for_answers(10)
        for thread in single:
            thread.start()
        time.sleep(1)
        killed = time.monotonic()
        stack.processes["gateway-2"].stop(signal.SIGKILL)  # the master, then its workers: not one instant
        dead = time.monotonic()
        for thread in single:
            thread.join(120)
        restarted(stack, "gateway-2")
        load.wait_for_answers(len(load.answers) + 20)
    finally:
        answers = load.stop()
    grants = {user.id: len(realm.sessions(user)) for user, *_ in logins}
    failed = failures(answers) + [a for a in logins if a[3] != 200]
    figures("gateway SIGKILL", answers=by_status(answers), single_logins=len(logins),
            single_logins_ok=sum(a[3] == 200 for a in logins), password_grants_seen=sum(grants.values()),
            failed=len(failed))
    assert max(grants.values()) <= 1, "nginx sent a login twice"
    assert all(grants[user.id] == 1 for user, *_, status in logins if status == 200)
    # In flight on it: sent before its last worker was gone, answered after the kill began.
    in_flight = [a for a in failures(answers) if a.started <= dead and a.ended >= killed]
    in_flight += [a for a in logins if a[3] != 200 and a[1] <= dead and a[2] >= killed]
    assert len(failed) == len(in_flight) <= len(load_users) + len(browsers) + len(single), (
        described(answers, killed), [(u.username, round(s - killed, 1), round(e - killed, 1), st)
                                     for u, s, e, st in logins if st != 200])


def served_through_nginx(stack, name, since, timeout=30):
    """Seconds until nginx sends gateway `name` a request again (a request line in its log past offset `since`):
    after a refused connection nginx leaves a gateway out for `fail_timeout` (nginx/gateway.conf)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        for line in stack.logs(name)[since:].splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # gunicorn's plain lines, or one being written
                continue
            if record.get("message") == "request" and record.get("path") != "/healthz":  # not the start's probe
                return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"nginx sent {name} nothing within {timeout} s of its restart")


def restarted(stack, name):
    """Start gateway `name` again; seconds until nginx sends it traffic. Each test that stops a gateway leaves it back
    in nginx's rotation: the next test to stop the other one would otherwise leave nginx no live upstream, and every
    request would be a 502 until the first one's fail_timeout had passed."""
    offset = len(stack.logs(name))
    stack.start_gateway(name)
    return served_through_nginx(stack, name, offset)


def test_a_rolling_restart_of_both_gateways(stack, load_users, browsers, figures):
    """One gateway after the other: stopped (SIGTERM), started, and the next one only once nginx sends the restarted
    one traffic again. Stopping the second sooner fails every request until nginx's fail_timeout of the first has
    passed (measured: 63 nginx 502s). As for one SIGTERM, gunicorn's listen-queue resets are the only failures."""
    load = MixedLoad(stack.url, load_users, browsers).start()
    took, resets = {}, 0
    began = time.monotonic()
    try:
        load.wait_for_answers(20)
        for name in GATEWAYS:
            restart = time.monotonic()
            resets += stopped_gracefully(stack, name)[1]
            back = restarted(stack, name)
            took[name] = f"{time.monotonic() - restart:.1f} s (in nginx's rotation {back:.1f} s after ready)"
    finally:
        answers = load.stop()
    figures("rolling restart", answers=by_status(answers), **{n.replace("-", "_"): t for n, t in took.items()},
            failed=len(failures(answers)), reset_in_gunicorns_listen_queue=resets)
    assert described([a for a in answers if a not in nginx_502s(answers)], began) == []
    assert len(nginx_502s(answers)) <= resets <= 2 * (len(load_users) + len(browsers)), described(answers, began)


def test_the_redis_primary_killed_sentinel_promotes_the_replica(stack, realm, load_users, browsers, figures):
    late = realm.create_user()
    load = MixedLoad(stack.url, load_users, browsers).start()
    try:
        load.wait_for_answers(20)
        assert stack.primary() == "redis-primary"
        killed = time.monotonic()
        stack.processes["redis-primary"].stop(signal.SIGKILL)
        deadline = killed + 60
        while stack.primary() != "redis-replica":
            assert time.monotonic() < deadline, "Sentinel promoted nobody within 60 s"
            time.sleep(0.1)
        promoted = time.monotonic()
        recovery = time_to_login(stack, late)
        load.wait_for_answers(len(load.answers) + 20)
    finally:
        answers = load.stop()
    kept = still_logged_in(stack, browsers)
    limit = username_limit_holds(stack)
    figures("redis failover", answers=by_status(answers), promotion=f"{promoted - killed:.1f} s",
            login_after_promotion=f"{recovery:.1f} s", bff_sessions_lost=len(browsers) - kept,
            username_limit=limit)
    assert recovery <= 10, f"the first login succeeded {recovery:.1f} s after the promotion"
    during = [a.shown for a in failures(between(answers, killed, promoted + recovery))]
    assert set(during) <= {UNAVAILABLE, TIMED_OUT}, collections.Counter(during)
    assert described(outside(answers, killed, promoted + recovery), killed) == []
    assert limit == "429 after 10 failures"


def username_limit_holds(stack):
    """compose's per-username limit (10 failures a minute) after the failover: the 11th attempt for an unknown
    username, from eleven client addresses, is refused without reaching Keycloak."""
    username = f"nosuch{int(time.time())}"
    statuses = []
    for address in client_addresses(11):
        answer = session_from(address).post(f"{stack.url}/api/login", json={"username": username,
                                                                             "password": "wrong-password"}, timeout=30)
        statuses.append((answer.status_code, answer.json()))
    expected = [(400, "code=404, message=username not found")] * 10 + [
        (429, "code=429, message=too many login attempts")]
    return "429 after 10 failures" if statuses == expected else str(collections.Counter(map(str, statuses)))
