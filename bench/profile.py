"""`make profile`: where the gateway's CPU goes, per kind of request, beside its reference (the floor for a
refresh, bare Flask for `/api/me` and the rejected payload; a login has only Keycloak beside it).

- **py-spy** (`--gil --nonblocking`) samples the one worker of each app (`GATEWAY_WORKERS=1`, the gateway's
  gunicorn settings otherwise) under wrk; each sample goes to the first candidate found from the innermost frame
  outwards (rate limits, the JSON log lines, metrics, requests vs urllib3, werkzeug's parsing...), and the shares
  times the worker's CPU per request (from `/proc`) give each candidate's cost in ms.
- **callgrind** counts the instructions of N requests in-process (`bench.inprocess`: the WSGI app called
  directly, no gunicorn), gateway and reference, and of the gateway with one feature switched off in that
  process, which says what the feature costs; and the micro kinds: one hit of the `limits` storage, one
  token-endpoint call through requests and through urllib3.

    python -m bench.profile [--seconds 12] [--only pyspy|callgrind] [--kinds refresh,login,me,rejected]
                            [--results DIR]

Needs a running Keycloak, py-spy (bench/requirements-profile.txt) and valgrind; writes a JSON and prints tables.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

from bench import procs, servers, wrk
from bench.phases import FORM, JSON
from bench.realm import CLIENT_ID, CLIENT_SECRET, PASSWORD, Realm
from bench.wrk import Request

ROOT = Path(__file__).resolve().parent.parent
# (candidate, path fragments of its frames); a sample goes to the first candidate met from its innermost frame.
CANDIDATES = [
    ("limits: storage and moving window", ("/limits/",)),
    ("gateway/limits.py (key functions, its storage)", ("gateway/limits.py",)),
    ("JSON log lines (logging, gateway/logs.py)", ("/logging/", "gateway/logs.py")),
    ("metrics (prometheus_client, mmap files)", ("prometheus_client/",)),
    ("requests (Session, adapter, models)", ("/requests/",)),
    ("urllib3 and http.client (the exchange)", ("/urllib3/", "/http/client.py")),
    ("token verification (PyJWT, cryptography)", ("/jwt/", "/cryptography/")),
    ("payload validation (marshmallow)", ("/marshmallow/",)),
    ("werkzeug: request parsing", ("werkzeug/wrappers/request.py", "werkzeug/sansio/request.py",
                                   "werkzeug/formparser.py", "werkzeug/datastructures", "werkzeug/http.py",
                                   "werkzeug/sansio/http.py", "werkzeug/middleware/proxy_fix.py")),
    ("werkzeug: routing, response, locals", ("/werkzeug/",)),
    ("Flask: dispatch, contexts, JSON", ("/flask/",)),
    ("gunicorn: HTTP parsing, worker loop", ("/gunicorn/",)),
    ("the app's own code", ("gateway/", "bench/floor.py", "bench/bare.py")),
]
OTHER = "anything else (stdlib at the top of the stack)"
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*):(?P<line>\d+)\)$")
# kind -> (reference app, connections) for the py-spy phases
PYSPY_KINDS = {"refresh": ("floor", 8), "login": (None, 4), "me": ("bare", 8), "rejected": ("bare", 8)}
# (kind, app, features off, requests) for callgrind
CALLGRIND = [
    ("me", "gateway", "", 50), ("me", "bare", "", 50), ("me", "gateway", "logs", 50),
    ("me", "gateway", "metrics", 50),
    ("rejected", "gateway", "", 50), ("rejected", "bare", "", 50), ("rejected", "gateway", "logs", 50),
    ("rejected", "gateway", "metrics", 50), ("rejected", "gateway", "limits", 50),
    ("refresh", "gateway", "", 50), ("refresh", "floor", "", 50), ("refresh", "gateway", "logs", 50),
    ("refresh", "gateway", "metrics", 50), ("refresh", "gateway", "limits", 50),
    ("login", "gateway", "", 12), ("login", "gateway", "logs", 12), ("login", "gateway", "limits", 12),
    ("limits-hit", "none", "", 400), ("http-requests", "none", "", 200), ("http-urllib3", "none", "", 200),
]


def options(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=12, help="seconds of load per py-spy phase (default 12)")
    parser.add_argument("--only", choices=("pyspy", "callgrind"))
    parser.add_argument("--kinds", default=",".join(PYSPY_KINDS), help="the py-spy phases' kinds (default: all)")
    parser.add_argument("--keycloak-url", default="http://localhost:8180/auth/")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def progress(text):
    print(text, file=sys.stderr, flush=True)


def candidate(stack):
    """The candidate of one sample's stack (outermost frame first, as py-spy writes it), and the file of the
    app's own frame when that is the candidate."""
    for frame in reversed(stack):
        found = FRAME.match(frame)
        path = found.group("path") if found else frame
        for name, fragments in CANDIDATES:
            if any(f in path for f in fragments):
                return name, (path[path.rindex("gateway/"):] if "gateway/" in path else Path(path).name)
    return OTHER, None


def shares(raw_path):
    """{candidate: share of samples}, {own file: share}, and the sample count of a py-spy raw (collapsed) file."""
    counts, own, total = {}, {}, 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        name, where = candidate(stack.split(";"))
        counts[name] = counts.get(name, 0) + n
        if name == "the app's own code":
            own[where] = own.get(where, 0) + n
        total += n
    return ({k: v / total for k, v in counts.items()}, {k: v / total for k, v in own.items()}, total) if total \
        else ({}, {}, 0)


def load_requests(kind, variant, realm, users, connections, token_path):
    """One request list per connection, as the bench sends them (refresh tokens chained)."""
    per = []
    for c in range(connections):
        if kind == "login":
            mine = users[c::connections]
            if variant == "keycloak":
                per.append([Request("POST", token_path, urlencode({
                    "grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "username": u.username, "password": PASSWORD, "scope": "profile email"}), FORM) for u in mine])
            else:
                per.append([Request("POST", "/api/login", json.dumps({"username": u.username, "password": PASSWORD}),
                                    JSON) for u in mine])
        elif kind == "refresh":
            token = realm.login(users[c])["refresh_token"]
            per.append([Request("POST", "/api/refresh", json.dumps({"refreshToken": token}), JSON,
                                chain="refreshToken", token=token)])
        elif kind == "me":
            token = realm.login(users[c])["access_token"]
            per.append([Request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})])
        else:
            per.append([Request("POST", "/api/login", json.dumps({"username": "ab", "password": PASSWORD}), JSON)])
    return per


def pyspy_phase(app, kind, realm, users, connections, seconds, results, token_path):
    """One app under wrk with py-spy on its worker: shares, CPU per request, requests."""
    [worker] = app.pids()[1:]
    per = load_requests(kind, app.name, realm, users, connections, token_path)
    raw = results / f"pyspy-{kind}-{app.name}.txt"
    expect = 400 if kind == "rejected" and app.name == "gateway" else 200
    report = {}
    loader = threading.Thread(target=lambda: report.update(wrk.run(app.url, per, seconds, expect)))
    before = procs.cpu_seconds([worker])
    loader.start()
    time.sleep(1)
    subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker), "--gil",
                    "--nonblocking", "--rate", "250",
                    "--format", "raw", "--full-filenames", "--duration", str(seconds - 2), "--output", str(raw)],
                   check=True, capture_output=True)
    loader.join()
    cpu = procs.cpu_seconds([worker]) - before
    by_candidate, own, samples = shares(raw)
    return {"requests": report["requests"], "statuses": report["statuses"],
            "cpu_ms_per_request": cpu * 1000 / report["requests"], "samples": samples,
            "shares": by_candidate, "own_files": own}


def pyspy(args, realm, users, results):
    """Every kind's py-spy phases, gateway and reference."""
    env = {**servers.environment(args.keycloak_url, CLIENT_SECRET, realm.name), "GATEWAY_WORKERS": "1",
           "TMPDIR": tempfile.mkdtemp(prefix="bench-state-", dir=results)}
    found = {}
    for kind, (reference, connections) in PYSPY_KINDS.items():
        if kind not in args.kinds.split(","):
            continue
        for name in ("gateway", reference):
            if name is None:
                continue
            app = servers.App(name, env, results / f"pyspy-{kind}-{name}.log").start().wait_ready()
            try:
                realm.end_sessions(users)
                found[f"{kind} {name}"] = figures = pyspy_phase(app, kind, realm, users, connections, args.seconds,
                                                                results, realm.token_path)
                progress(f"py-spy {kind:<9} {name:<8} {figures['requests'] / args.seconds:7.0f} req/s  "
                         f"{figures['cpu_ms_per_request']:.3f} ms CPU/request  {figures['samples']} samples")
            finally:
                app.stop()
    return found


def callgrind(args, users):
    """Instructions per request of every CALLGRIND configuration."""
    found = {}
    for kind, app, off, n in CALLGRIND:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "callgrind.out"
            command = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
                       f"--callgrind-out-file={out}", sys.executable, "-m", "bench.inprocess", "--app", app,
                       "--kind", kind, "--requests", str(n), "--off", off, "--keycloak-url", args.keycloak_url,
                       "--users", ",".join(u.username for u in users[:8])]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"callgrind {kind} {app} {off}: {done.stderr[-2000:]}")
            total = int(re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M).group(1))
        label = f"{kind} {app}" + (f" without {off}" if off else "")
        found[label] = {"instructions_per_request": total / n, "requests": n,
                        "statuses": json.loads(done.stdout.splitlines()[-1])["statuses"]}
        progress(f"callgrind {label:<32} {total / n / 1e6:7.3f} M instructions/request  {found[label]['statuses']}")
    return found


def table(found):
    """The printed tables: py-spy shares and ms per kind, then callgrind's counts."""
    lines = []
    for kind, (reference, _) in PYSPY_KINDS.items():
        mine = found.get("pyspy", {})
        gateway, other = mine.get(f"{kind} gateway"), mine.get(f"{kind} {reference}") if reference else None
        if not gateway:
            continue
        lines += ["", f"{kind}: py-spy --gil, share of samples x CPU per request (ms)",
                  f"{'candidate':<50}{'gateway':>16}{(reference or '') :>16}"]
        names = sorted(set(gateway["shares"]) | set(other["shares"] if other else ()),
                       key=lambda k: -gateway["shares"].get(k, 0))
        for name in names:
            cells = []
            for figures in (gateway, other):
                share = figures["shares"].get(name, 0) if figures else None
                cells.append("" if share is None else
                             f"{share * 100:5.1f}% {share * figures['cpu_ms_per_request']:.3f}")
            lines.append(f"{name:<50}{cells[0]:>16}{cells[1]:>16}")
        total = [f"{f['cpu_ms_per_request']:.3f} ms" if f else "" for f in (gateway, other)]
        lines.append(f"{'CPU per request of the worker (/proc)':<50}{total[0]:>16}{total[1]:>16}")
        own = ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(gateway["own_files"].items(), key=lambda i: -i[1])[:6])
        lines.append(f"  the gateway's own code by file: {own}")
    counts = found.get("callgrind", {})
    if counts:
        lines += ["", "callgrind: instructions per request, in-process (M)"]
        lines += [f"{label:<40}{c['instructions_per_request'] / 1e6:>10.3f}" for label, c in counts.items()]
    return "\n".join(lines)


def main(argv=None):
    args = options(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    realm = Realm(args.keycloak_url)
    found = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip()}
    users = realm.create_users(16)
    try:
        if args.only != "callgrind":
            found["pyspy"] = pyspy(args, realm, users, args.results)
        if args.only != "pyspy":
            found["callgrind"] = callgrind(args, users)
    finally:
        realm.reset_brute_force(realm.users)
        realm.delete_users()
    name = args.results / f"profile-{found['started'].replace(':', '')}.json"
    name.write_text(json.dumps(found, indent=1) + "\n")
    print(table(found))
    print(f"\nraw results: {name}")


if __name__ == "__main__":
    main()
