"""Bounded login loads for the tests with real processes: a fixed number of client threads, each logging in its own
user (so that Keycloak never sees two grants of one user at once) until told to stop, recording every answer."""

import http.client
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests


@dataclass
class Answer:
    started: float  # monotonic
    seconds: float
    status: int
    body: object
    retry_after: str | None = None


def login(url, user, timeout=30):
    """One POST /api/login; the answer with its duration."""
    started = time.monotonic()
    response = requests.post(f"{url}/api/login", json={"username": user.username, "password": user.password},
                             timeout=timeout)
    return Answer(started, time.monotonic() - started, response.status_code, response.json(),
                  response.headers.get("Retry-After"))


def raw_login(url, user, timeout=30):
    """POST /api/login with http.client: the same request as `login`, at a fraction of the client's CPU (for bursts
    where the client shares the cores with the gateway and Keycloak)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request("POST", "/api/login", json.dumps({"username": user.username, "password": user.password}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    return Answer(started, time.monotonic() - started, response.status, body, response.getheader("Retry-After"))


class LoginLoad:
    """One thread per user, logging that user in again and again (`pause` seconds apart, so that fast refusals do
    not turn the load into a flood) until `stop()` or `seconds` ran out. A request that fails outright is recorded
    with status None."""

    def __init__(self, url, users, seconds=60, pause=0.02):
        self.url, self.users, self.pause = url, users, pause
        self.answers = []
        self._lock = threading.Lock()
        self._until = time.monotonic() + seconds
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(user,), daemon=True) for user in users]

    def _run(self, user):
        while not self._stop.is_set() and time.monotonic() < self._until:
            started = time.monotonic()
            try:
                answer = login(self.url, user)
            except requests.RequestException as exc:
                answer = Answer(started, time.monotonic() - started, None, repr(exc))
            with self._lock:
                self.answers.append(answer)
            self._stop.wait(self.pause)

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.answers
