"""`make bench`: the gateway beside direct Keycloak and its reference apps, measured with wrk and at a constant
rate with the bench's open-loop generator (issues #14 and #21).

    python -m bench.run [--quick] [--rounds N] [--seconds S] [--warmup N] [--results DIR] [--rotation]

Needs a running Keycloak (`make keycloak`); starts the gateway, the refresh floor and the bare Flask app under
the repository's gunicorn config, makes its own users (with `--rotation`, in a realm of its own with
refresh-token rotation on), warms Keycloak up, then runs every group of phases round after round, each phase
beside its reference (order swapped every other round so that drift and after-effects fall on both), and
prints one table. Writes the raw results (JSON) and a plot (PNG) under bench/results/. Measures and prints;
asserts nothing.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from bench import measure, openloop, phases, procs, report, servers, wrk
from bench import realm as realms
from bench.realm import CLIENT_SECRET, Realm

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flask", "werkzeug", "gunicorn", "python-keycloak", "requests", "jwcrypto", "pyjwt", "urllib3",
            "cryptography", "marshmallow")


def options(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: one round of 1-second phases, no warm-up, fewer users (who get locked)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every phase (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per phase (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="warm-up passes over every phase, 3 s each, not counted (default 2)")
    parser.add_argument("--keycloak-url", default="http://localhost:8180/auth/")
    parser.add_argument("--rotation", action="store_true",
                        help="run in a realm of the bench's own, a copy of keycloak/realm-edm.json with refresh-token "
                             "rotation on (revokeRefreshToken, refreshTokenMaxReuse 0), deleted at the end")
    parser.add_argument("--master-admin", default=None, metavar="USER:PASSWORD",
                        help="the master realm's administrator that makes and deletes that realm (default: "
                             "KC_BOOTSTRAP_ADMIN_USERNAME / _PASSWORD, else admin:admin, as scripts/keycloak.sh "
                             "starts it)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                        help="where the JSON and the PNG go (default bench/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1, 0
    args.settle = 0.2 if args.quick else 1.0
    args.wrong_password_users = 16 if args.quick else phases.WRONG_PASSWORD_USERS
    if args.master_admin is None:
        args.master_admin = (f"{os.environ.get('KC_BOOTSTRAP_ADMIN_USERNAME') or 'admin'}:"
                             f"{os.environ.get('KC_BOOTSTRAP_ADMIN_PASSWORD') or 'admin'}")
    user, colon, password = args.master_admin.partition(":")
    if not (user and colon):
        parser.error("--master-admin takes USER:PASSWORD")
    args.master_admin = (user, password)
    return args


def progress(text):
    print(text, file=sys.stderr, flush=True)


def _git(*args):
    answer = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return answer.stdout.strip() if answer.returncode == 0 else None


def java_version(pid):
    """The version of the JVM running as `pid` (its own binary asked), or None."""
    if not pid:
        return None
    answer = subprocess.run([f"/proc/{pid}/exe", "-version"], capture_output=True, text=True)
    lines = answer.stderr.splitlines()
    return lines[0] if answer.returncode == 0 and lines else None


def describe(args, realm, keycloak_pid, settings):
    """Machine, versions and settings of this run."""
    with open("/proc/meminfo") as meminfo:
        memory_kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    keycloak = realm.server_info()
    code = ("gateway", "gunicorn.conf.py", "requirements.txt")
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(memory_kib / 2**20, 1),
                    "kernel": platform.release(), "load_average": os.getloadavg()},
        "versions": {"python": platform.python_version(), **{p: metadata.version(p) for p in PACKAGES},
                     "keycloak": keycloak.get("version"), "java": java_version(keycloak_pid), "wrk": wrk.version(),
                     "openloop": openloop.version()},
        "git": {"head": _git("rev-parse", "--short", "HEAD"),
                "gateway_last_changed": _git("log", "-1", "--format=%h", "--", *code),
                "gateway_dirty": bool(_git("status", "--porcelain", "--", *code))},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "warmup_passes": args.warmup,
                     "gunicorn": settings, "keycloak_url": args.keycloak_url, "keycloak_pid_found": bool(keycloak_pid),
                     "wrong_password_users": args.wrong_password_users, "realm": realm.name,
                     "refresh_token_rotation": realm.rotation(),
                     "open_loop_share": phases.OPEN_LOOP_SHARE},
    }


class Bench:
    """The running bench: realm, apps and the phases' requests."""

    def __init__(self, args, realm, apps, keycloak_pid, groups):
        self.args, self.realm, self.apps, self.keycloak_pid, self.groups = args, realm, apps, keycloak_pid, groups
        split = urlsplit(args.keycloak_url)
        self.keycloak_base = f"{split.scheme}://{split.netloc}"
        self.keycloak_port = split.port or 80
        self.requests = phases.Requests(realm, realm.users, split.path.rstrip("/") + realm.token_path, groups,
                                        args.wrong_password_users)

    def phase(self, group, variant, seconds, rate=None):
        """Prepare the realm for one phase, run it (an open loop at `rate` requests a second), and return its
        figures."""
        time.sleep(self.args.settle)  # let Keycloak finish the requests the last phase's load left in flight
        users = [u for mine in self.requests.users_of(group) for u in mine]
        if group.kind == "wrong password":
            self.realm.reset_brute_force(users)
        else:
            self.realm.end_sessions(users)
        per_connection = self.requests.build(group, variant)
        time.sleep(self.args.settle)  # and the asynchronous work the preparation started (sessions ended...)
        app = self.apps.get(variant)
        url = app.url if app else self.keycloak_base
        expect = group.expect[variant]
        if group.open_loop:
            slots = [request for requests in per_connection for request in requests]
            load = lambda: openloop.run(url, slots, rate, seconds, expect)  # noqa: E731
        else:
            load = lambda: wrk.run(url, per_connection, seconds, expect)  # noqa: E731
        figures = measure.phase(load, app, self.keycloak_pid, self.keycloak_port)
        return {"group": group.name, "kind": group.kind, "concurrency": group.concurrency, "variant": variant,
                "open_loop": group.open_loop, **figures}

    def sweep(self, label, seconds, round_number, reverse):
        """Every group once, each group's variants one after another; yields their figures. An open loop's rate
        is its share of the gateway's throughput in this sweep's saturating phase of the same kind."""
        throughput = {}
        for group in self.groups:
            rate = None
            if group.open_loop:
                rate = max(1.0, phases.OPEN_LOOP_SHARE * throughput[phases.saturating(self.groups, group.kind).name])
            for variant in (reversed(group.variants) if reverse else group.variants):
                figures = self.phase(group, variant, seconds, rate)
                if variant == "gateway":
                    throughput[group.name] = figures["throughput"]
                progress(f"{label} {group.name:<20} {variant:<9} {figures['throughput']:9.1f} req/s  "
                         f"p50 {figures['latency_ms']['p50']:7.2f} ms  errors {figures['errors']}  "
                         f"others {figures['other_cores']:.2f} cores")
                yield {"round": round_number, **figures}


def main(argv=None):
    args = options(argv)
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is needed (Debian package wrk; scripts/prerequisites.sh bench installs it)")
    keycloak_pid = procs.listening_pid(urlsplit(args.keycloak_url).port or 80)
    groups = phases.plan()
    own_realm = None
    if args.rotation:
        progress("bench: making a realm of its own, with refresh-token rotation on")
        own_realm = realms.create_copy(args.keycloak_url, args.master_admin, realms.ROTATION)
    realm = Realm(args.keycloak_url, own_realm or realms.REALM)
    try:
        run(args, realm, keycloak_pid, groups)
    finally:
        if own_realm:
            realms.delete_copy(args.keycloak_url, args.master_admin, own_realm)


def run(args, realm, keycloak_pid, groups):
    """The bench in `realm`: its users, apps and phases, then the table, the JSON and the plot."""
    # The apps' host state (the gateway's store, its login turns' lock files) in a directory of this run's own:
    # no refresh token spent or session ended by another gateway on this host reaches the bench's.
    state = tempfile.mkdtemp(prefix="bench-state-")
    try:
        measure_and_report(args, realm, keycloak_pid, groups, {**servers.environment(
            args.keycloak_url, CLIENT_SECRET, realm.name), "TMPDIR": state})
    finally:
        shutil.rmtree(state, ignore_errors=True)


def measure_and_report(args, realm, keycloak_pid, groups, env):
    """The phases with the apps in `env`, then the table, the JSON and the plot."""
    meta = describe(args, realm, keycloak_pid, servers.gunicorn_settings(env))
    if not keycloak_pid:
        progress("bench: Keycloak's process is not on this host; its CPU and memory are not measured")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    name = f"{meta['mode']}-{stamp}"
    apps = {}
    try:
        progress(f"bench: making {phases.users_needed(groups, args.wrong_password_users)} users")
        realm.create_users(phases.users_needed(groups, args.wrong_password_users))
        for variant in servers.APPS:
            apps[variant] = servers.App(variant, env, args.results / f"{name}-{variant}.log").start()
        for app in apps.values():
            app.wait_ready()
        bench = Bench(args, realm, apps, keycloak_pid, groups)
        warmup = [p for n in range(args.warmup) for p in bench.sweep(f"warm-up {n + 1}", 3, 0, False)]
        measured = [p for r in range(1, args.rounds + 1)
                    for p in bench.sweep(f"round {r}", args.seconds, r, reverse=r % 2 == 0)]
    finally:
        for app in apps.values():
            app.stop()
        if realm.users:
            realm.reset_brute_force(realm.users)
            realm.delete_users()

    rows, figures = report.summary(measured, groups), report.ratios(measured, groups)
    title = (f"EDM gateway bench, {meta['started']}, gateway code {meta['git']['gateway_last_changed']}, "
             f"{args.rounds} rounds x {args.seconds} s, {meta['machine']['cores']} cores")
    print(title)
    print(report.table(rows, figures))
    print("\nanswers of the error phases:\n" + report.answers(measured, groups))
    results = {"meta": meta, "summary": rows, "ratios": figures, "phases": measured, "warmup": warmup}
    (args.results / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    report.plot(measured, groups, args.results / f"{name}.png", title)
    print(f"\nraw results: {args.results / (name + '.json')}, plot: {args.results / (name + '.png')}")


if __name__ == "__main__":
    main()
