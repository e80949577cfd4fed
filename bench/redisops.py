"""Redis operations per request of each kind, the gateway on a private `redis-server` (GATEWAY_REDIS_URL):
`bench.inprocess` run twice per kind, with N and with 5N requests, and the difference of Redis' `INFO commandstats`
divided by 4N, so that the app's start and the warm-up cancel out. For docs/sizing.md.

    python -m bench.redisops [--requests 40]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from bench.realm import Realm
from bench.servers import ROOT, free_port

KINDS = ("refresh", "login", "me", "rejected")


def command_calls(port):
    """{command: calls} from the server's INFO commandstats, INFO itself left out."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = s.recv(65536)
        while b"\r\n" not in data or len(data) < data.index(b"\r\n") + 4 + int(data[1:data.index(b"\r\n")]):
            data += s.recv(65536)
    calls = {}
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_"):].split(":", 1)
            calls[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    calls.pop("info", None)
    return calls


def run(args, kind, n, url, users):
    """`bench.inprocess` of `kind`, n requests, the gateway's store at `url`; the statuses answered."""
    done = subprocess.run([sys.executable, "-m", "bench.inprocess", "--kind", kind, "--requests", str(n),
                           "--keycloak-url", args.keycloak_url, "--users", ",".join(users)],
                          cwd=ROOT, env={**_env(), "GATEWAY_REDIS_URL": url}, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{kind}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])["statuses"]


def _env():
    """This environment without the gateway's and Keycloak's variables (inprocess sets the bench's own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEYCLOAK_"))}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.redisops", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--keycloak-url", default="http://localhost:8180/auth/")
    args = parser.parse_args(argv)
    port, scratch = free_port(), tempfile.mkdtemp(prefix="bench-redis-")
    server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save",
                               "", "--appendonly", "no", "--dir", scratch], stdout=subprocess.DEVNULL)
    realm = Realm(args.keycloak_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                command_calls(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        users = [u.username for u in realm.create_users(8)]
        url = f"redis://127.0.0.1:{port}/0"
        for kind in KINDS:
            counts = []
            for n in (args.requests, 5 * args.requests):
                before = command_calls(port)
                statuses = run(args, kind, n, url, users)
                after = command_calls(port)
                counts.append({c: after.get(c, 0) - before.get(c, 0) for c in after})
                realm.end_sessions(realm.users)
            per = {c: (counts[1].get(c, 0) - counts[0].get(c, 0)) / (4 * args.requests) for c in counts[1]}
            per = {c: round(v, 2) for c, v in sorted(per.items()) if round(v, 2)}
            print(json.dumps({"kind": kind, "statuses": statuses, "redis_operations_per_request":
                              round(sum(per.values()), 2), "by_command": per}))
    finally:
        realm.reset_brute_force(realm.users)
        realm.delete_users()
        server.terminate()
        server.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
