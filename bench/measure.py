"""One phase measured: the load generator's figures (wrk's, or the open-loop generator's) plus what the processes
spent meanwhile, read from `/proc` before and after the load."""

import resource
import time
from dataclasses import dataclass

from bench import procs


@dataclass(frozen=True)
class Sample:
    """Counters at one instant; the differences of two samples are a phase's costs."""

    wall: float
    app_cpu: float
    keycloak_cpu: float
    load_cpu: float
    own_cpu: float
    machine_cpu: float

    @classmethod
    def take(cls, app_pids, keycloak_pid):
        # The load generator is the only child the bench waits for during a phase: the children's rusage is its.
        children, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        keycloak = [keycloak_pid] if keycloak_pid else []
        return cls(time.monotonic(), procs.cpu_seconds(app_pids), procs.cpu_seconds(keycloak),
                   children.ru_utime + children.ru_stime, own.ru_utime + own.ru_stime, procs.machine_busy_seconds())


def per_request_ms(seconds, requests):
    return seconds * 1000 / requests if requests else None


def segments_between(before, after):
    """Segments sent between two `procs.segments_sent` readings (connections opened since included)."""
    return sum(count - before.get(connection, 0) for connection, count in after.items())


def phase(load, app, keycloak_pid, keycloak_port):
    """Run `load` (which returns the generator's report) and return the phase's figures. `app` is the gunicorn
    app under load, or None when the load goes straight to Keycloak; `keycloak_pid` the JVM's pid, or None when
    it is not on this host."""
    app_pids = app.pids() if app else []
    sent_before = procs.segments_sent(app_pids, keycloak_port)
    before = Sample.take(app_pids, keycloak_pid)
    report = load()
    after = Sample.take(app_pids, keycloak_pid)
    sent_after = procs.segments_sent(app_pids, keycloak_port)
    n = report["requests"]
    spent = {name: getattr(after, name) - getattr(before, name) for name in Sample.__dataclass_fields__}
    others = spent["machine_cpu"] - spent["app_cpu"] - spent["keycloak_cpu"] - spent["load_cpu"] - spent["own_cpu"]
    return {
        "requests": n,
        "seconds": report["seconds"],
        "throughput": n / report["seconds"] if report["seconds"] else 0.0,
        "latency_ms": report["latency_ms"],
        "errors": report["unexpected_status"] + report["socket_errors"],
        # Answers to a chained refresh that handed out no next token (a refusal, a lost connection).
        "chain_breaks": report.get("chain_breaks", 0),
        "socket_errors": report["socket_errors"],
        "statuses": report["statuses"],
        "bodies": report["bodies"],
        **{key: report[key] for key in ("rate", "service_ms", "dispatch_lag_ms", "waited_for_slot") if key in report},
        "app_cpu_ms": per_request_ms(spent["app_cpu"], n) if app else None,
        "keycloak_cpu_ms": per_request_ms(spent["keycloak_cpu"], n) if keycloak_pid else None,
        "load_cpu_ms": per_request_ms(spent["load_cpu"], n),
        # CPU the rest of the machine used meanwhile, in cores: other work on the host disturbs the phase.
        "other_cores": max(others, 0.0) / spent["wall"],
        # TCP data segments the app sent to Keycloak per request: 0 means no upstream call; a call is one or two
        # (headers and body). A connection closed during the phase escapes the count.
        "upstream_segments": segments_between(sent_before, sent_after) / n if app and n else None,
        "app_rss_mib": {"master": round(procs.rss_mib(app_pids[0]), 1),
                        "workers": [round(procs.rss_mib(pid), 1) for pid in app_pids[1:]]} if app else None,
        "keycloak_rss_mib": round(procs.rss_mib(keycloak_pid), 1) if keycloak_pid else None,
    }
