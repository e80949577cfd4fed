"""The apps the bench loads: the gateway and its reference apps, each started from the repository root under
the repository's gunicorn config (`gunicorn.conf.py`), so that all run with the gateway's server settings."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
APPS = {"gateway": "gateway:create_app()", "floor": "bench.floor:create_app()", "bare": "bench.bare:create_app()"}
# The server settings the bench lets through from its own environment; everything else it sets itself.
PASSED_THROUGH = ("GATEWAY_WORKERS", "GATEWAY_THREADS")
GUNICORN_SETTINGS = ("worker_class", "workers", "threads", "keepalive", "timeout", "accesslog", "errorlog")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(keycloak_url, client_secret, realm="edm"):
    """A clean environment for the apps: the stack's settings only, nothing of the caller's but the server's
    worker and thread counts."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "KEYCLOAK_URL": keycloak_url, "KEYCLOAK_CLIENT_SECRET": client_secret, "KEYCLOAK_REALM": realm,
           # The rate limits run as deployed: the default per-address limit (100 a minute), each request from
           # another client address behind one trusted proxy (bench/wrk/replay.lua), so no address reaches it;
           # the per-username limit raised just enough for the wrong-password phases' failures (192 users).
           # (A limit of a million a minute from one address would keep up to ~180,000 timestamps in its moving
           # window, which the limits library's memory storage inserts at the front of a list: a cost per request
           # no deployment pays.)
           "GATEWAY_TRUSTED_PROXIES": "1", "GATEWAY_LIMIT_PER_USERNAME": "600/minute"}
    env.update({name: os.environ[name] for name in PASSED_THROUGH if os.environ.get(name)})
    return env


def gunicorn_settings(env):
    """The settings gunicorn takes from `gunicorn.conf.py` in `env`, read by running the file as gunicorn does."""
    code = ("import json, runpy; g = runpy.run_path('gunicorn.conf.py'); "
            f"print(json.dumps({{k: g.get(k) for k in {GUNICORN_SETTINGS!r}}}))")
    answer = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True)
    return json.loads(answer.stdout.splitlines()[-1])  # the last line: the config itself may log before it


class App:
    """One app under gunicorn on a free loopback port; everything it writes goes to `log_path`, the gateway's
    JSON request and audit lines included, as they would to a real log."""

    def __init__(self, name, env, log_path):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "GATEWAY_BIND": f"127.0.0.1:{self.port}"}
        self.log_path = log_path
        self.process = None

    def start(self):
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), APPS[self.name]],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout=60):
        """Return once a worker answers HTTP (any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; its log: {self.log_path}")
            try:
                requests.get(self.url + "/healthz", timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s; its log: {self.log_path}")

    def pids(self):
        """gunicorn's master and its workers."""
        return procs.tree(self.process.pid)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
