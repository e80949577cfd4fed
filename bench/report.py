"""The bench's results: medians over rounds, the figures issue #21 (and before it #14) sets targets for, the
printed table, and a plot. Ratios are taken within each round (a phase beside its reference, run next to it)
and then summarised."""

import statistics

from bench.phases import saturating

QUANTILES = ("p50", "p90", "p99", "p99.9")

SERVERS = {"gateway": "gateway", "keycloak": "Keycloak direct", "floor": "refresh floor", "bare": "bare Flask"}


def _div(a, b):
    return a / b if a is not None and b else None


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def by_round(phases):
    """{round: {(group name, variant): phase}}."""
    rounds = {}
    for p in phases:
        rounds.setdefault(p["round"], {})[(p["group"], p["variant"])] = p
    return rounds


def summary(phases, groups):
    """One row per group and variant: medians over rounds, errors summed, the largest worker."""
    rows = []
    for group in groups:
        for variant in group.variants:
            mine = [p for p in phases if p["group"] == group.name and p["variant"] == variant]
            workers = [w for p in mine if p["app_rss_mib"] for w in p["app_rss_mib"]["workers"]]
            rows.append({
                "group": group.name, "variant": variant, "rounds": len(mine),
                "throughput": _median(p["throughput"] for p in mine),
                **{q: _median(p["latency_ms"].get(q) for p in mine) for q in QUANTILES},
                "rate": _median(p.get("rate") for p in mine),
                "errors": sum(p["errors"] for p in mine), "requests": sum(p["requests"] for p in mine),
                "app_cpu_ms": _median(p["app_cpu_ms"] for p in mine),
                "keycloak_cpu_ms": _median(p["keycloak_cpu_ms"] for p in mine),
                "worker_rss_mib": max(workers) if workers else None,
                "other_cores": _median(p["other_cores"] for p in mine),
            })
    return rows


def _definitions(groups):
    """(figure, target, format, function of one round's phases). Targets are issue #21's; those only #14 set
    say so."""
    names = {g.name for g in groups}

    def at(group, variant, field):
        def get(phases):
            phase = phases.get((group, variant))
            if phase is None:
                return None
            return phase["latency_ms"].get(field) if field in QUANTILES else phase[field]
        return get

    def ratio(a, b):
        return lambda phases: _div(a(phases), b(phases))

    def added(a, b):
        return lambda phases: None if a(phases) is None or b(phases) is None else a(phases) - b(phases)

    def top(kind):
        return saturating(groups, kind).name

    def versus(kind, field, variant, reference):
        """`field` of `variant` over the same of `reference`, at the kind's saturating concurrency."""
        return ratio(at(top(kind), variant, field), at(top(kind), reference, field))

    def cpu_share(kind, variant):
        """The app's CPU per request over Keycloak's in the same phase."""
        return ratio(at(top(kind), variant, "app_cpu_ms"), at(top(kind), variant, "keycloak_cpu_ms"))

    def p50_added(kind, variant):
        return added(at(f"{kind} c=1", variant, "p50"), at(f"{kind} c=1", "keycloak", "p50"))

    def open_added(kind, quantile):
        group = f"{kind} open loop"
        return added(at(group, "gateway", quantile), at(group, "keycloak", quantile))

    def refresh_refusals(phases):
        """Answers of every refresh phase of the round that were not 200, lost connections included."""
        mine = [p for (group, _), p in phases.items() if p["kind"] == "refresh" and group in names]
        return sum(p["errors"] for p in mine) if mine else None

    cpu, tput = "app_cpu_ms", "throughput"
    figures = [
        ("refresh: gateway CPU/request ÷ the floor's", "≤ 1.1", "{:.2f}",
         versus("refresh", cpu, "gateway", "floor")),
        ("refresh: gateway CPU ÷ Keycloak CPU", "#14: ≤ 0.8", "{:.2f}", cpu_share("refresh", "gateway")),
        ("  the floor: its CPU ÷ Keycloak CPU", "", "{:.2f}", cpu_share("refresh", "floor")),
        ("refresh throughput at saturation, gateway ÷ direct", "≥ 0.5", "{:.2f}",
         versus("refresh", tput, "gateway", "keycloak")),
        ("  the floor ÷ direct", "", "{:.2f}", versus("refresh", tput, "floor", "keycloak")),
        ("refresh answers not 200, every refresh phase (chained tokens)", "0", "{:.0f}", refresh_refusals),
        ("refresh latency added at c=1, p50 (ms)", "#14: ≤ +1.6", "{:+.2f}", p50_added("refresh", "gateway")),
        ("  the floor's (ms)", "", "{:+.2f}", p50_added("refresh", "floor")),
        ("login throughput at saturation, gateway ÷ direct", "#14: ≥ 0.97", "{:.2f}",
         versus("login", tput, "gateway", "keycloak")),
        ("login latency added at c=1, p50 (ms)", "", "{:+.1f}", p50_added("login", "gateway")),
        ("login: gateway CPU ÷ Keycloak CPU", "≤ 0.04", "{:.3f}", cpu_share("login", "gateway")),
        ("wrong password throughput at saturation, gateway ÷ direct", "", "{:.2f}",
         versus("wrong password", tput, "gateway", "keycloak")),
        ("wrong password: Keycloak CPU, via gateway ÷ direct", "", "{:.2f}",
         versus("wrong password", "keycloak_cpu_ms", "gateway", "keycloak")),
        ("/api/me throughput ÷ bare Flask", "≥ 0.85", "{:.2f}", versus("me", tput, "gateway", "bare")),
        ("/api/me CPU/request ÷ bare Flask's", "≤ 1.3", "{:.2f}", versus("me", cpu, "gateway", "bare")),
        ("/api/me: TCP sends to Keycloak per request", "0", "{:.4f}", at(top("me"), "gateway", "upstream_segments")),
        # Counted in TCP data segments sent to Keycloak: zero is no call; one refresh grant shows what a call is.
        ("rejected payload: TCP sends to Keycloak per request", "0", "{:.4f}",
         at(top("rejected payload"), "gateway", "upstream_segments")),
        ("  for scale: TCP sends per refresh (one call)", "", "{:.2f}",
         at(top("refresh"), "gateway", "upstream_segments")),
        ("rejected payload: Keycloak CPU per request (ms)", "", "{:.3f}",
         at(top("rejected payload"), "gateway", "keycloak_cpu_ms")),
        ("rejected payload throughput ÷ bare Flask", "≥ 0.8", "{:.2f}",
         versus("rejected payload", tput, "gateway", "bare")),
    ]
    for kind in ("refresh", "login"):
        if f"{kind} open loop" not in names:
            continue
        figures += [
            (f"{kind}, open loop at ½ the gateway's saturation: rate (req/s)", "", "{:.0f}",
             at(f"{kind} open loop", "gateway", "rate")),
            ("  latency added by the gateway, p50 (ms)", "", "{:+.2f}", open_added(kind, "p50")),
            ("  p99 (ms)", "≤ +5", "{:+.2f}", open_added(kind, "p99")),
            ("  p99.9 (ms)", "", "{:+.2f}", open_added(kind, "p99.9")),
        ]
    return figures


def ratios(phases, groups):
    """Each figure of `_definitions` per round, with its median and range."""
    rounds = by_round(phases)
    found = []
    for label, target, fmt, figure in _definitions(groups):
        values = [figure(rounds[r]) for r in sorted(rounds)]
        known = [v for v in values if v is not None]
        found.append({"figure": label, "target": target, "format": fmt, "per_round": values,
                      "median": _median(known), "min": min(known, default=None), "max": max(known, default=None)})
    return found


def _cell(value, fmt):
    return "-" if value is None else fmt.format(value)


def table(rows, figures):
    """The one printed table: every phase's figures, then the ratios."""
    head = (f"{'phase':<22}{'server':<16}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>9}"
            f"{'errors':>8}{'app CPU':>9}{'KC CPU':>9}{'RSS/wkr':>9}{'others':>8}")
    lines = [head, f"{'':<38}{'(median of rounds)':>45}{'ms/req':>17}{'ms/req':>9}{'MiB':>9}{'cores':>8}",
             "-" * len(head)]
    previous = None
    for r in rows:
        lines.append(
            f"{r['group'] if r['group'] != previous else '':<22}{SERVERS[r['variant']]:<16}"
            f"{_cell(r['throughput'], '{:,.0f}'):>9}{_cell(r['p50'], '{:.1f}'):>9}{_cell(r['p90'], '{:.1f}'):>9}"
            f"{_cell(r['p99'], '{:.1f}'):>9}{_cell(r['p99.9'], '{:.1f}'):>9}{r['errors']:>8}"
            f"{_cell(r['app_cpu_ms'], '{:.2f}'):>9}"
            f"{_cell(r['keycloak_cpu_ms'], '{:.2f}'):>9}{_cell(r['worker_rss_mib'], '{:.0f}'):>9}"
            f"{_cell(r['other_cores'], '{:.2f}'):>8}")
        previous = r["group"]
    lines += ["-" * len(head), f"{'figure (per round, then median)':<66}{'median':>9}{'range':>19}{'issue target':>14}"]
    for f in figures:
        spread = "-" if f["min"] is None else f"{f['format'].format(f['min'])}..{f['format'].format(f['max'])}"
        lines.append(f"{f['figure']:<66}{_cell(f['median'], f['format']):>9}{spread:>19}{f['target']:>14}")
    lines.append("open loop: a constant rate (the bench's generator), latency from each request's intended start; "
                 "gateway and direct at the same rate")
    return "\n".join(lines)


def answers(phases, groups):
    """What the error phases were answered, summed over rounds: shows what each really measured."""
    lines = []
    for group in groups:
        for variant in group.variants:
            if group.expect[variant] < 300:
                continue
            counts = {}
            for p in phases:
                if p["group"] == group.name and p["variant"] == variant:
                    for body, n in p["bodies"].items():
                        counts[body] = counts.get(body, 0) + n
            total = sum(counts.values()) or 1
            ranked = sorted(counts.items(), key=lambda item: -item[1])
            shares = ", ".join(f"{body} {n * 100 / total:.0f}%" for body, n in ranked)
            lines.append(f"{group.name}, {SERVERS[variant]}: {shares or 'no answers'}")
    return "\n".join(lines)


def plot(phases, groups, path, title):
    """Throughput (an open loop's: its latency percentiles) and CPU per request for every group, each round a
    dot, medians as bars; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    colours = {"gateway": "#d1495b", "keycloak": "#00798c", "floor": "#edae49", "bare": "#66a182"}
    figure, axes = pyplot.subplots(2, len(groups), figsize=(2.3 * len(groups), 6.5), squeeze=False)
    for column, group in enumerate(groups):
        top, bottom = axes[0][column], axes[1][column]
        for x, variant in enumerate(group.variants):
            mine = [p for p in phases if p["group"] == group.name and p["variant"] == variant]
            if group.open_loop:
                # p50, p99 and p99.9 side by side, lighter as they go up
                for i, (quantile, alpha) in enumerate((("p50", 0.9), ("p99", 0.6), ("p99.9", 0.35))):
                    values = [p["latency_ms"].get(quantile) for p in mine]
                    at = x + (i - 1) * 0.27
                    top.bar(at, _median(values) or 0, width=0.25, color=colours[variant], alpha=alpha)
                    top.plot([at] * len(values), [v or 0 for v in values], "k.", markersize=3)
            else:
                rates = [p["throughput"] for p in mine]
                top.bar(x, _median(rates) or 0, color=colours[variant], alpha=0.8)
                top.plot([x] * len(rates), rates, "k.", markersize=4)
            app = _median(p["app_cpu_ms"] for p in mine) or 0
            keycloak = _median(p["keycloak_cpu_ms"] for p in mine) or 0
            bottom.bar(x, app, color=colours[variant], alpha=0.8)
            bottom.bar(x, keycloak, bottom=app, color="#999999", alpha=0.6)
        for axis in (top, bottom):
            axis.set_xticks(range(len(group.variants)), [SERVERS[v].replace(" ", "\n") for v in group.variants],
                            fontsize=7)
            axis.tick_params(axis="y", labelsize=7)
        top.set_title(group.name + ("\nms: p50, p99, p99.9" if group.open_loop else ""), fontsize=9)
    axes[0][0].set_ylabel("requests/s (bar: median, dots: rounds)", fontsize=8)
    axes[1][0].set_ylabel("CPU ms/request\n(colour: app, grey: Keycloak)", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
