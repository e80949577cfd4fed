"""docker-compose.yml's topology without Docker, from Debian's packages and Keycloak's Maven distribution: PostgreSQL,
Keycloak built and started in production mode on it, a Redis primary, its replica and three Sentinels, two gateways
under gunicorn and nginx with nginx/gateway.conf in front of them.

Everything the two share comes from compose's own files: the Keycloak build options from keycloak/Dockerfile, its
start flags and environment, the Redis and Sentinel commands, the gateways' environment and the proxy's
configuration from docker-compose.yml (defaults of `${VAR:-default}` applied) and the files it mounts. Only the
addresses and ports change: `Relocation` and the `relocate_*` functions say how, and tests/test_topology.py checks the
running processes against it.

    python -m tests.topology start|stop|status [--name NAME]   (scripts/topology.sh)
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

import redis
from gateway.config import VARIABLES
from tests.compose_env import compose_file, resolve_defaults, service_environment

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "edm-gateway")
KEYCLOAK_VERSION = (ROOT / "keycloak" / "VERSION").read_text().strip()
KEYCLOAK_DOCKERFILE = ROOT / "keycloak" / "Dockerfile"
SENTINEL_CONF = ROOT / "redis" / "sentinel.conf"
NGINX_CONF = ROOT / "nginx" / "gateway.conf"
GATEWAYS = ("gateway-1", "gateway-2")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
REDIS_SERVERS = ("redis-primary", "redis-replica")
# Every compose service that listens, with the port it listens on inside the compose network.
LISTENERS = {"postgres": 5432, "keycloak": 8180, "keycloak-management": 9000, "keycloak-cluster": 7800,
             "redis-primary": 6379, "redis-replica": 6379, **{name: 26379 for name in SENTINELS},
             **{name: 8000 for name in GATEWAYS}, "proxy": 8000}
# Variables of the developer's shell that would change what a process of the stack does.
FOREIGN = re.compile(r"(KEYCLOAK|GATEWAY|KC|EDM|POSTGRES|PG|REDIS|PROMETHEUS)_.*|JAVA_OPTS.*|(HTTPS?|ALL|NO)_PROXY",
                     re.IGNORECASE)


def log(message):
    print(f"topology: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    """The loopback port that stands for each compose listener."""

    by_service: dict = field(default_factory=dict)

    @classmethod
    def free(cls):
        """A free loopback port for every listener (the suite's stacks)."""
        return cls({name: free_port() for name in LISTENERS})

    @classmethod
    def from_base(cls, base):
        """Fixed ports from `base` up, in LISTENERS' order (`make topology`)."""
        return cls({name: base + offset for offset, name in enumerate(LISTENERS)})

    def __getitem__(self, service):
        return self.by_service[service]


def compose_addresses(compose):
    """Each service's fixed address on the compose network (`ipv4_address`)."""
    addresses = {}
    for name, service in compose["services"].items():
        for network in (service.get("networks") or {}).values():
            if network and network.get("ipv4_address"):
                addresses[name] = network["ipv4_address"]
    return addresses


class Relocation:
    """How a compose value becomes this host's: `service:port` and the services' fixed addresses become loopback
    addresses, the published ports (`localhost:8180`, `localhost:8000`) the ports that stand for them, listen
    ports their own. Nothing else in a value changes."""

    def __init__(self, compose, ports):
        self.ports = ports
        published = {"localhost:8180": f"localhost:{ports['keycloak']}",
                     "localhost:8000": f"127.0.0.1:{ports['proxy']}"}
        named = {f"{name}:{port}": f"127.0.0.1:{ports[name]}" for name, port in LISTENERS.items()
                 if name in compose["services"]}
        self.addresses = {**published, **named}
        self.hosts = {address: "127.0.0.1" for address in compose_addresses(compose).values()}
        self.hosts["0.0.0.0"] = "127.0.0.1"
        pattern = "|".join(re.escape(a) for a in sorted([*self.addresses, *self.hosts], key=len, reverse=True))
        self._pattern = re.compile(rf"(?<![\w.-])({pattern})(?![\w.-]|:\d)")

    def text(self, value, own=None):
        """`value` with every compose address in it replaced; `own` service's listen address (`0.0.0.0:port`)
        becomes its loopback one."""
        if own in LISTENERS:
            value = value.replace(f"0.0.0.0:{LISTENERS[own]}", f"127.0.0.1:{self.ports[own]}")
        return self._pattern.sub(lambda m: self.addresses.get(m.group(1)) or self.hosts[m.group(1)], value)

    def host_port(self, host, port):
        """A `host port` pair given as two words (Redis and Sentinel)."""
        return self.text(f"{host}:{port}").rsplit(":", 1)


def relocate_keycloak_flags(flags, relocation):
    """compose's Keycloak start flags for this host: its listen, management and cluster ports, its addresses."""
    own = {"--http-port": "keycloak", "--http-management-port": "keycloak-management",
           "--cache-embedded-network-bind-port": "keycloak-cluster"}
    relocated = []
    for flag in flags:
        name, equals, value = flag.partition("=")
        if equals and name in own:
            value = str(relocation.ports[own[name]])
        elif equals:
            value = ",".join(relocation.text(part) for part in value.split(","))
        relocated.append(f"{name}{equals}{value}")
    return relocated


def relocate_redis_args(args, service, relocation):
    """compose's redis-server arguments for this host: the server's own port, the primary's address."""
    relocated = list(args)
    for i, arg in enumerate(relocated):
        if arg == "--port":
            relocated[i + 1] = str(relocation.ports[service])
        if arg == "--replicaof":
            relocated[i + 1], relocated[i + 2] = relocation.host_port(relocated[i + 1], relocated[i + 2])
    return relocated


def relocate_sentinel_conf(text, relocation):
    """redis/sentinel.conf for this host: the monitored primary's address."""
    def monitor(match):
        host, port = relocation.host_port(match.group(2), match.group(3))
        return f"{match.group(1)}{host} {port}"

    return re.sub(r"^(sentinel monitor \S+ )(\S+) (\d+)", monitor, text, flags=re.MULTILINE)


def relocate_nginx_conf(text, relocation):
    """nginx/gateway.conf for this host: the upstream servers' and the listen addresses."""
    text = re.sub(r"^(\s*server\s+)(\S+:\d+)", lambda m: m.group(1) + relocation.text(m.group(2)), text,
                  flags=re.MULTILINE)
    return re.sub(r"^(\s*listen\s+)(\d+)\b", lambda m: f"{m.group(1)}127.0.0.1:{relocation.ports['proxy']}", text,
                  flags=re.MULTILINE)


def keycloak_build_options(dockerfile=KEYCLOAK_DOCKERFILE):
    """The options of keycloak/Dockerfile's `kc.sh build` (its exec-form RUN line)."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("RUN [") and "kc.sh" in line:
            command = json.loads(line[len("RUN "):])
            if command[1] == "build":
                return command[2:]
    raise ValueError(f"{dockerfile} has no exec-form `RUN [.../kc.sh, build, ...]` line")


def keycloak_image_version(dockerfile=KEYCLOAK_DOCKERFILE):
    """The version of every official Keycloak image keycloak/Dockerfile starts from."""
    versions = set(re.findall(r"^FROM quay\.io/keycloak/keycloak:(\S+)", dockerfile.read_text(), re.MULTILINE))
    if len(versions) != 1:
        raise ValueError(f"{dockerfile} starts from {sorted(versions) or 'no'} Keycloak image(s)")
    return versions.pop()


def command_of(service, variables=None):
    """A compose service's `command`, every part a string, interpolated."""
    return [resolve_defaults(str(part), variables) for part in service["command"]]


class Plan:
    """What each process of the stack runs: compose's commands, environments and files, relocated."""

    def __init__(self, ports, variables=None, compose=None):
        self.variables = dict(variables or {})  # what an `.env` file would set
        self.compose = compose or compose_file()
        self.services = self.compose["services"]
        self.ports = ports
        self.relocation = Relocation(self.compose, ports)

    def environment(self, service):
        """A service's compose environment for this host."""
        return {name: self.relocation.text(value, own=service)
                for name, value in service_environment(service, variables=self.variables).items()}

    def keycloak_build(self):
        return keycloak_build_options()

    def keycloak_start(self):
        return relocate_keycloak_flags(command_of(self.services["keycloak"], self.variables), self.relocation)

    def redis_args(self, service):
        return relocate_redis_args(command_of(self.services[service], self.variables)[1:], service, self.relocation)

    def sentinel_args(self, service, conf_path):
        """The Sentinel's arguments: compose's, with its own copy of the file and its own port."""
        args = command_of(self.services[service], self.variables)[1:]
        assert args[0] == "/data/sentinel.conf", args
        return relocate_redis_args([str(conf_path), *args[1:]], service, self.relocation)

    def sentinel_conf(self):
        return relocate_sentinel_conf(SENTINEL_CONF.read_text(), self.relocation)

    def nginx_conf(self):
        return relocate_nginx_conf(NGINX_CONF.read_text(), self.relocation)

    def postgres(self):
        """(database, user, password) as compose gives them to the postgres image."""
        env = service_environment("postgres", variables=self.variables)
        return env["POSTGRES_DB"], env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]

    @property
    def redis_service(self):
        """The Sentinel service name the stack monitors."""
        return re.search(r"^sentinel monitor (\S+)", SENTINEL_CONF.read_text(), re.MULTILINE).group(1)

    def url(self, service, path=""):
        return f"http://127.0.0.1:{self.ports[service]}{path}"


def own_environment():
    """This process's environment less everything that would steer a server of the stack (every variable the
    gateway reads among them: a container starts with none)."""
    return {name: value for name, value in os.environ.items()
            if not FOREIGN.fullmatch(name) and name not in VARIABLES}


def wait_until(check, what, timeout, process=None, log_file=None):
    """Poll `check` until it holds; fail naming `what` (and the log's tail) after `timeout` s or if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            if check():
                return
        except (OSError, requests.RequestException, redis.RedisError):
            pass
        time.sleep(0.2)
    tail = ""
    if log_file and Path(log_file).exists():
        tail = "\n".join(Path(log_file).read_text(errors="replace").splitlines()[-30:])
    state = "exited" if process is not None and process.poll() is not None else f"not ready after {timeout} s"
    raise RuntimeError(f"{what} {state}; last lines of {log_file}:\n{tail}")


def answers_http(url, status=200):
    return requests.get(url, timeout=2).status_code == status


class Process:
    """One server of the stack in its own session, its output in a log file, its pid in a pid file (so that a later
    `stop`, or the next start, ends what an interrupted run left)."""

    def __init__(self, name, argv, home, env=None, cwd=None):
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log = home / "logs" / f"{name}.log"
        self.pidfile = home / "pids" / f"{name}.pid"
        self.process = None

    def start(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.write_text(f"{self.process.pid} {started_at(self.process.pid)}\n")
        return self

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def running(self):
        return self.process is not None and self.process.poll() is None

    def send(self, signum):
        """Send `signum` to the server itself (gunicorn's workers follow their arbiter); SIGKILL to every process of
        its session at once, as a container's processes die together."""
        if self.running():
            if signum == signal.SIGKILL:
                os.killpg(self.process.pid, signum)
            else:
                os.kill(self.process.pid, signum)

    def stop(self, signum=signal.SIGTERM, timeout=30):
        """Stop the server and anything it left in its session; how long it took."""
        began = time.monotonic()
        if self.process is None:
            return 0.0
        if self.process.poll() is None:
            self.send(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        kill_session(self.process.pid)
        self.process.wait()
        self.pidfile.unlink(missing_ok=True)
        return time.monotonic() - began


def kill_session(sid):
    """SIGKILL every process left in session `sid` (the server's children, once the server itself is gone)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def started_at(pid):
    """When process `pid` started (clock ticks since boot): with the pid, it names one process, pids being reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]  # a zombie has ended


def stop_leftovers(home):
    """End the processes that an earlier run under `home` left behind: each server that its pid file names, and
    everything in that server's session."""
    for pidfile in sorted((home / "pids").glob("*.pid")) if (home / "pids").exists() else ():
        pid, _, started = pidfile.read_text().strip().partition(" ")
        if pid.isdigit() and started and started_at(int(pid)) == started:
            log(f"stopping {pidfile.stem} (pid {pid}) left by an earlier run")
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while started_at(int(pid)) == started and time.monotonic() < deadline:
                time.sleep(0.1)
            kill_session(int(pid))
        pidfile.unlink(missing_ok=True)


def as_cluster_owner(*argv, **kwargs):
    """Run a PostgreSQL command as the clusters' owner: as root the `postgres` user, else the current one."""
    command = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
    return subprocess.run(command, check=True, capture_output=True, text=True, env=own_environment(), cwd="/",
                          **kwargs)


def stop_postgres(data):
    """pg_ctl's fast shutdown of the cluster in `data`, if one runs there."""
    if (data / "postmaster.pid").exists():
        as_cluster_owner(Postgres.bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")


def cluster_directories(home):
    """Where the cluster of the stack under `home` may live (see Postgres)."""
    return [home / "postgres", Path("/var/lib/postgresql/edm-gateway") / home.name]


def remove_stack(home):
    """End whatever runs of the stack under `home` and delete its files (its cluster included)."""
    stop_leftovers(home)
    for directory in cluster_directories(home):
        try:
            stop_postgres(directory / "data")
        except subprocess.CalledProcessError as exc:
            log(f"postgres under {directory} did not stop: {exc.stderr}")
        shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


class Postgres:
    """A cluster of Debian's PostgreSQL of its own on a loopback port, run by pg_ctl; as root, as the `postgres`
    user (PostgreSQL refuses to run as root), otherwise as the current user."""

    def __init__(self, plan, home):
        self.plan = plan
        self.as_postgres = os.geteuid() == 0
        self.directory = self._cluster_directory(home)
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"  # where the postgres user can write it

    def _cluster_directory(self, home):
        directory = home / "postgres"
        if self.as_postgres and not self._reachable_by_postgres(home):
            # root's home is private (0700): the postgres user cannot reach a cluster under it
            directory = cluster_directories(home)[1]
        return directory

    @staticmethod
    def _reachable_by_postgres(path):
        return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
                              capture_output=True).returncode == 0

    @staticmethod
    def bin(name):
        for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (version / name).exists():
                return str(version / name)
        found = shutil.which(name)
        if not found:
            raise RuntimeError(f"{name} not found: install Debian's postgresql (scripts/prerequisites.sh test)")
        return found

    def _run(self, *argv):
        return as_cluster_owner(*argv)

    def init(self):
        """A fresh cluster with compose's database, user and password (as the postgres image makes them)."""
        database, user, password = self.plan.postgres()
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        secret = self.directory / "password"
        secret.touch(mode=0o600)
        secret.write_text(password + "\n")
        if self.as_postgres:
            shutil.chown(secret, "postgres", "postgres")
        self._run(self.bin("initdb"), "-D", str(self.data), "-U", user, "--pwfile", str(secret), "-A", "scram-sha-256",
                  "-E", "UTF8", "--no-sync")
        secret.unlink()
        self.start()
        env = {**own_environment(), "PGPASSWORD": password}
        subprocess.run([self.bin("createdb"), "-h", "127.0.0.1", "-p", str(self.plan.ports["postgres"]), "-U", user,
                        database], check=True, capture_output=True, env=env)

    def start(self):
        options = f"-c listen_addresses=127.0.0.1 -c port={self.plan.ports['postgres']} -c unix_socket_directories=''"
        self._run(self.bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                  "start")

    def stop(self):
        """A fast shutdown (open sessions cut), if it runs."""
        stop_postgres(self.data)

    def restart(self):
        """Stop (fast: sessions are cut) and start again."""
        self.stop()
        self.start()

    def running(self):
        return subprocess.run([self.bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.plan.ports["postgres"])],
                              capture_output=True).returncode == 0


class Keycloak:
    """The Maven distribution copied once per set of build options, `kc.sh build` run in the copy (cached outside
    the repository, rebuilt only when the options or the version change), then `kc.sh start` with compose's flags."""

    def __init__(self, plan, home):
        self.plan, self.home = plan, home
        self.options = plan.keycloak_build()
        tag = re.sub(r"[^A-Za-z0-9]+", "-", " ".join(self.options)).strip("-")[:80]
        self.distribution = CACHE / "topology" / f"keycloak-{KEYCLOAK_VERSION}-{tag}"
        self.process = None

    def build(self):
        """The built copy: reused while its stamp names the same options; how long this took."""
        began = time.monotonic()
        stamp = self.distribution / "edm-build-options"
        if stamp.exists() and stamp.read_text() == " ".join(self.options):
            return 0.0
        subprocess.run([str(ROOT / "scripts" / "keycloak.sh"), "fetch"], check=True)
        partial = self.distribution.with_name(self.distribution.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(self.distribution, ignore_errors=True)
        zip_file = CACHE / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
        if zip_file.exists():
            with zipfile.ZipFile(zip_file) as archive:
                archive.extractall(partial)
            (partial / f"keycloak-{KEYCLOAK_VERSION}").rename(self.distribution)
            partial.rmdir()
        else:
            shutil.copytree(CACHE / f"keycloak-{KEYCLOAK_VERSION}", self.distribution,
                            ignore=shutil.ignore_patterns("data", "edm-gateway.*"))
        for script in (self.distribution / "bin").glob("*.sh"):
            script.chmod(0o755)
        log(f"kc.sh build {' '.join(self.options)} (once per set of options)")
        build_log = self.home / "logs" / "keycloak-build.log"
        build_log.parent.mkdir(parents=True, exist_ok=True)
        with open(build_log, "wb") as output:
            subprocess.run([str(self.distribution / "bin" / "kc.sh"), "build", *self.options], check=True,
                           stdout=output, stderr=subprocess.STDOUT, env=own_environment())
        stamp.write_text(" ".join(self.options))
        return time.monotonic() - began

    def import_directory(self):
        """The distribution's import directory holds this checkout's realm file, as compose mounts it."""
        target = self.distribution / "data" / "import"
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*.json"):
            stale.unlink()
        mounts = [volume.split(":") for volume in self.plan.services["keycloak"]["volumes"]]
        for source, destination, *_ in mounts:
            if destination.startswith("/opt/keycloak/data/import/"):
                shutil.copy(ROOT / source, target / Path(destination).name)

    def start(self, timeout=300):
        self.import_directory()
        env = {**own_environment(), **self.plan.environment("keycloak")}
        argv = [str(self.distribution / "bin" / "kc.sh"), *self.plan.keycloak_start()]
        self.process = Process("keycloak", argv, self.home, env=env, cwd=str(self.distribution)).start()
        began = time.monotonic()
        wait_until(self.ready, "Keycloak", timeout, self.process.process, self.process.log)
        return time.monotonic() - began

    def ready(self):
        return answers_http(self.plan.url("keycloak-management", "/auth/health/ready"))

    def stop(self, signum=signal.SIGTERM):
        return self.process.stop(signum, timeout=60) if self.process else 0.0


class Stack:
    """The whole topology under one directory: start, stop, and each server on its own for the fault tests."""

    def __init__(self, home, ports, variables=None):
        self.home = Path(home)
        self.plan = Plan(ports, variables)
        self.postgres = Postgres(self.plan, self.home)
        self.keycloak = Keycloak(self.plan, self.home)
        self.processes = {}
        self.timings = {}

    @property
    def url(self):
        """nginx: where the clients go."""
        return self.plan.url("proxy")

    @property
    def keycloak_url(self):
        """Keycloak's public base URL, the one in the tokens' issuer."""
        return f"http://localhost:{self.plan.ports['keycloak']}/auth/"

    @property
    def sentinels(self):
        return [("127.0.0.1", self.plan.ports[name]) for name in SENTINELS]

    def start(self):
        """Every server, each waited for as compose's `depends_on` waits for its health check."""
        self.home.mkdir(parents=True, exist_ok=True)
        stop_leftovers(self.home)
        began = time.monotonic()
        self._timed("keycloak build", self.keycloak.build)
        self._timed("postgres", self.postgres.init)
        self._timed("keycloak start", self.keycloak.start)
        self._timed("redis", self.start_redis)
        for name in GATEWAYS:
            self._timed(name, self.start_gateway, name)
        self._timed("nginx", self.start_nginx)
        self.timings["total"] = round(time.monotonic() - began, 1)
        (self.home / "ports.json").write_text(json.dumps(self.plan.ports.by_service, indent=1))
        return self

    def _timed(self, what, start, *args):
        began = time.monotonic()
        start(*args)
        self.timings[what] = round(time.monotonic() - began, 1)

    def start_redis(self):
        for name in REDIS_SERVERS:
            self.start_redis_server(name)
        self.wait_replicated()
        conf_dir = self.home / "sentinel"
        conf_dir.mkdir(parents=True, exist_ok=True)
        for name in SENTINELS:
            conf = conf_dir / f"{name}.conf"
            conf.write_text(self.plan.sentinel_conf())  # each its own copy, as in compose: Sentinel rewrites it
            argv = [redis_server(), *self.plan.sentinel_args(name, conf), "--bind", "127.0.0.1", "--dir",
                    str(conf_dir)]
            self.processes[name] = Process(name, argv, self.home, env=own_environment()).start()
        for name in SENTINELS:
            wait_until(lambda n=name: self.sentinel_ready(n), name, 30, self.processes[name].process,
                       self.processes[name].log)

    def start_redis_server(self, name):
        data = self.home / name
        data.mkdir(parents=True, exist_ok=True)
        argv = [redis_server(), *self.plan.redis_args(name), "--bind", "127.0.0.1", "--dir", str(data)]
        process = Process(name, argv, self.home, env=own_environment()).start()
        self.processes[name] = process
        client = redis.Redis(port=self.plan.ports[name], socket_timeout=1)
        wait_until(client.ping, name, 30, process.process, process.log)
        return process

    def wait_replicated(self, timeout=30):
        replica = redis.Redis(port=self.plan.ports["redis-replica"], socket_timeout=1)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up", "the replica", timeout)

    def sentinel_ready(self, name):
        """The Sentinel knows the primary, its replica and the two other Sentinels (a quorum can form)."""
        sentinel = redis.Redis(port=self.plan.ports[name], socket_timeout=1)
        service = self.plan.redis_service
        primary = sentinel.execute_command("SENTINEL", "MASTER", service)
        details = dict(zip(primary[::2], primary[1::2], strict=True)) if isinstance(primary, list) else primary
        known = {k.decode() if isinstance(k, bytes) else k: v for k, v in details.items()}
        return int(known.get("num-slaves", 0)) >= 1 and int(known.get("num-other-sentinels", 0)) >= 2

    def primary(self):
        """The Redis service that Sentinel names primary now."""
        host, port = redis.Redis(port=self.plan.ports[SENTINELS[0]], socket_timeout=1).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.plan.redis_service)
        return next(name for name in REDIS_SERVERS if self.plan.ports[name] == int(port))

    def gateway_environment(self, name):
        """compose's environment of a gateway, relocated, plus what a container has of its own: a private temporary
        directory (per-host state such as the login turns' lock files)."""
        tmp = self.home / name / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**own_environment(), **self.plan.environment(name), "TMPDIR": str(tmp)}

    def start_gateway(self, name, timeout=60):
        """A gateway as the image starts it (`gunicorn -c python:gateway.gunicorn_conf`), ready when /healthz is."""
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        argv = [gunicorn, "-c", "python:gateway.gunicorn_conf"]
        process = Process(name, argv, self.home, env=self.gateway_environment(name), cwd=str(ROOT)).start()
        self.processes[name] = process
        url = self.plan.url(name, "/healthz")
        wait_until(lambda: answers_http(url), name, timeout, process.process, process.log)
        return process

    def start_nginx(self):
        """Debian's nginx with nginx/gateway.conf included where the official image includes conf.d/*.conf."""
        directory = self.home / "nginx"
        for sub in ("conf.d", "temp"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "conf.d" / "default.conf").write_text(self.plan.nginx_conf())
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp paths under this home
        (directory / "nginx.conf").write_text(f"""{user}worker_processes auto;
pid {directory}/nginx.pid;
error_log {self.home}/logs/nginx-error.log notice;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {self.home}/logs/nginx-access.log;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {directory}/temp/body;
    proxy_temp_path {directory}/temp/proxy;
    fastcgi_temp_path {directory}/temp/fastcgi;
    uwsgi_temp_path {directory}/temp/uwsgi;
    scgi_temp_path {directory}/temp/scgi;
    include {directory}/conf.d/*.conf;
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e",
                str(self.home / "logs" / "nginx-error.log"), "-g", "daemon off;"]
        process = Process("nginx", argv, self.home, env=own_environment()).start()
        self.processes["nginx"] = process
        wait_until(lambda: answers_http(self.url + "/healthz"), "nginx", 30, process.process, process.log)

    def stop(self):
        """Everything, in the reverse order of the start; never raises (a cleanup)."""
        for name in ["nginx", *GATEWAYS, *SENTINELS, *REDIS_SERVERS]:
            if name in self.processes:
                self.processes.pop(name).stop()
        try:
            self.keycloak.stop()
        finally:
            try:
                self.postgres.stop()
            except subprocess.CalledProcessError as exc:
                log(f"postgres did not stop: {exc.stderr}")
            stop_leftovers(self.home)

    def logs(self, name):
        """What a server of the stack wrote so far."""
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def redis_server():
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found: install Debian's redis-server (scripts/prerequisites.sh)")
    return found


def stack_home(name):
    return CACHE / "topology" / name


def main(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/topology.sh", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--name", default="interactive", help="the stack's directory under the cache directory")
    parser.add_argument("--base-port", type=int, default=int(os.environ.get("EDM_TOPOLOGY_BASE_PORT", "18000")),
                        help="the first of the stack's fixed loopback ports")
    args = parser.parse_args(argv)
    home = stack_home(args.name)
    stack = Stack(home, Ports.from_base(args.base_port))
    if args.command == "stop":
        stop_leftovers(home)
        stack.postgres.stop()
        log("stopped")
        return 0
    if args.command == "status":
        running = sorted(p.stem for p in (home / "pids").glob("*.pid")) if (home / "pids").exists() else []
        print(f"running: {', '.join(running) or 'nothing'}; postgres: "
              f"{'up' if stack.postgres.running() else 'down'}")
        return 0 if running else 1
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    ports = stack.plan.ports
    print(f"""
The compose topology runs (logs: {home}/logs, timings: {stack.timings}):
  nginx (the gateways):  {stack.url}/          e.g. curl -s -X POST {stack.url}/api/login \\
                           -H 'Content-Type: application/json' -d '{{"username":"ahmadakbar","password":"password"}}'
  Keycloak:              {stack.keycloak_url}admin/   (health on 127.0.0.1:{ports['keycloak-management']})
  PostgreSQL:            127.0.0.1:{ports['postgres']}
  Redis primary/replica: 127.0.0.1:{ports['redis-primary']} / 127.0.0.1:{ports['redis-replica']}, Sentinels on \
{', '.join(str(ports[n]) for n in SENTINELS)}
Stop it with `scripts/topology.sh stop`.""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
