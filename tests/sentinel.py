"""A Redis primary, its replica and three Sentinels (Debian's redis-server and redis-sentinel) on free loopback
ports, nothing kept on disk: `redis+sentinel://` made real, and a failover made real by killing the primary.
Loaded by `pytest_plugins` in conftest.py."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import free_port

SERVICE = "edm"


def _ask(port, command, timeout=1.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(command)
        return s.recv(4096)


def _wait(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} within {seconds} s")


class SentinelGroup:
    """A primary, a replica and three Sentinels watching them (quorum 2), quick to notice a dead primary."""

    DOWN_AFTER_MS = 1000

    def __init__(self, directory):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes = {}
        locations = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{locations}/{SERVICE}/0"

    def _binary(self, name):
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} (Debian package {name}) is not installed; run `make test`, which installs it",
                        pytrace=False)
        return found

    def _redis(self, port, replica_of=None):
        command = [self._binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", self.directory, "--logfile", "",
                   "--repl-diskless-sync-delay", "0"]  # the replica's first sync at once, not after 5 s
        if replica_of:
            command += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _ask(port, b"PING\r\n").startswith(b"+PONG"), 10, f"redis-server on {port} answering")

    def _sentinel(self, port):
        config = os.path.join(self.directory, f"sentinel-{port}.conf")  # Sentinel rewrites its file: one each
        with open(config, "w") as file:
            file.write(f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                       f"sentinel monitor {SERVICE} 127.0.0.1 {self.redis_ports[0]} 2\n"
                       f"sentinel down-after-milliseconds {SERVICE} {self.DOWN_AFTER_MS}\n"
                       f"sentinel failover-timeout {SERVICE} 10000\n")
        self.processes[port] = subprocess.Popen([self._binary("redis-sentinel"), config, "--logfile", ""],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        self._redis(self.redis_ports[0])
        self._redis(self.redis_ports[1], replica_of=self.redis_ports[0])
        for port in self.sentinel_ports:
            self._sentinel(port)
        _wait(lambda: all(self.primary_port(port) == self.redis_ports[0] for port in self.sentinel_ports)
              and b"master_link_status:up" in _ask(self.redis_ports[1], b"INFO replication\r\n"), 15,
              "the Sentinels agreeing on the primary, and the replica in sync")
        return self

    def primary_port(self, sentinel_port=None):
        """The primary's port as a Sentinel names it."""
        answer = _ask(sentinel_port or self.sentinel_ports[0],
                      f"SENTINEL get-master-addr-by-name {SERVICE}\r\n".encode())
        return int(answer.split(b"\r\n")[-2])

    def kill_primary(self):
        """SIGKILL the primary; returns its port."""
        port = self.primary_port()
        self.processes.pop(port).send_signal(signal.SIGKILL)
        return port

    def wait_for_promotion(self, old_port, seconds=30):
        _wait(lambda: self.primary_port() != old_port, seconds, "a Sentinel promoting the replica")

    def stop(self):
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


@pytest.fixture
def sentinel_group(tmp_path):
    group = SentinelGroup(tmp_path / "sentinel").start()
    yield group
    group.stop()
