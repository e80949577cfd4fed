"""wrk driven from Python: one connection per wrk thread, each replaying its own requests (`wrk/replay.lua`),
or chaining the refresh tokens it is handed."""

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "wrk"
MARKER = "BENCH-JSON "
# A refresh token the loads can chain: Keycloak's are compact JWS, which JSON and form bodies carry unescaped.
CHAINABLE = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Request:
    """One HTTP request as a connection sends it. With `chain`, the body carries `token` once, and each answer's
    JSON member `chain` (the next refresh token) takes its place in the connection's next request."""

    method: str
    path: str
    body: str = ""
    headers: dict = field(default_factory=dict)
    chain: str = ""
    token: str = ""

    def __post_init__(self):
        if self.chain and not (CHAINABLE.fullmatch(self.token) and self.body.count(self.token) == 1):
            raise ValueError("a chained request's body must carry its token once, and the token be chainable")

    def line(self, connection):
        """The request as a line of replay.lua's requests file."""
        chain = f"{self.chain}={self.token}" if self.chain else ""
        fields = [str(connection), self.method, self.path, self.body, chain,
                  *(f"{k}: {v}" for k, v in self.headers.items())]
        if any("\t" in f or "\n" in f for f in fields):
            raise ValueError("a request field holds a tab or a line break")
        return "\t".join(fields)


def version():
    """wrk's version line."""
    # `wrk -v` prints its version and usage, and exits non-zero.
    answer = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (answer.stdout or answer.stderr).splitlines()[0].strip()


def run(base_url, per_connection, seconds, expect):
    """Load `base_url` for `seconds` with one connection per entry of `per_connection` (a list of request
    lists, replayed round robin); returns replay.lua's report, with `expect`ed status counted apart."""
    connections = len(per_connection)
    with tempfile.NamedTemporaryFile("w", prefix="bench-requests-", suffix=".tsv") as requests_file:
        for connection, requests in enumerate(per_connection):
            if any(r.chain for r in requests) and len(requests) > 1:
                raise ValueError("a connection that chains tokens sends one request, again and again")
            requests_file.writelines(request.line(connection) + "\n" for request in requests)
        requests_file.flush()
        command = ["wrk", "-t", str(connections), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
                   "-s", "replay.lua", base_url, "--", requests_file.name, str(expect)]
        answer = subprocess.run(command, cwd=SCRIPTS, capture_output=True, text=True, timeout=seconds + 60)
    lines = [line for line in answer.stdout.splitlines() if line.startswith(MARKER)]
    if answer.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({answer.returncode}): {answer.stderr.strip() or answer.stdout.strip()}")
    report = json.loads(lines[-1][len(MARKER):])
    answered = sum(report["statuses"].values())
    report["unexpected_status"] = answered - report["statuses"].get(str(expect), 0)
    return report
