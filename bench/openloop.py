"""The constant-rate phases' load generator (`openloop/`, Go, standard library only): built on first use into
the cache directory, keyed by its source, and driven from Python like wrk."""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "openloop"
TIMEOUT_SECONDS = 10


def cache_dir():
    """Where the stack keeps what it builds or fetches (scripts/keycloak.sh's directory)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("EDM_CACHE_DIR") or Path(base) / "edm-gateway")


def binary():
    """The generator built from the current source (built now if this source has not been)."""
    digest = hashlib.sha256()
    for path in sorted(SOURCE.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = cache_dir() / f"openloop-{digest.hexdigest()[:12]}"
    if not target.exists():
        go = shutil.which("go")
        if not go:
            raise RuntimeError("bench: Go is needed to build the open-loop generator (Debian package golang-go; "
                               "scripts/prerequisites.sh bench installs it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per build, renamed into place: two benches building at once never share a file.
        partial = Path(tempfile.mkdtemp(prefix="openloop-", dir=target.parent)) / "openloop"
        # No toolchain download, no C: the standard library of the Go that is here.
        env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        built = subprocess.run([go, "build", "-o", str(partial), "."], cwd=SOURCE, env=env, capture_output=True,
                               text=True)
        if built.returncode != 0:
            shutil.rmtree(partial.parent, ignore_errors=True)
            raise RuntimeError(f"bench: building the open-loop generator failed: {built.stderr.strip()}")
        partial.rename(target)
        shutil.rmtree(partial.parent, ignore_errors=True)
    return target


def version():
    """The Go that builds the generator."""
    answer = subprocess.run(["go", "version"], capture_output=True, text=True)
    return answer.stdout.strip() or None


def run(base_url, slots, rate, seconds, expect, addresses=4096):
    """Send `rate` requests a second for `seconds` to `base_url`, each by a free slot of `slots` (one
    `wrk.Request` each); returns the generator's report, with `expect`ed status counted apart."""
    plan = {"url": base_url, "rate": rate, "seconds": seconds, "timeout_seconds": TIMEOUT_SECONDS,
            "addresses": addresses,
            "slots": [{**asdict(s), "headers": s.headers} for s in slots]}
    with tempfile.NamedTemporaryFile("w", prefix="bench-plan-", suffix=".json") as plan_file:
        json.dump(plan, plan_file)
        plan_file.flush()
        answer = subprocess.run([str(binary()), plan_file.name], capture_output=True, text=True,
                                timeout=seconds + 2 * TIMEOUT_SECONDS + 30)
    if answer.returncode != 0:
        raise RuntimeError(f"openloop failed ({answer.returncode}): {answer.stderr.strip()}")
    report = json.loads(answer.stdout)
    answered = sum(report["statuses"].values())
    report["unexpected_status"] = answered - report["statuses"].get(str(expect), 0)
    return report
