"""What `/proc` (and `ss`) say about processes: CPU time and resident memory per process tree, whole-machine CPU,
which process listens on a TCP port, and the data a process tree sent over its connections to a port."""

import os
import re
import subprocess

TICKS = os.sysconf("SC_CLK_TCK")
LISTEN = "0A"  # the TCP state LISTEN as /proc/net/tcp writes it


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()


def tree(pid):
    """`pid` and all its descendants that are alive now."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents.setdefault(int(_stat_fields(entry)[1]), []).append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue  # gone while we looked
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def cpu_seconds(pids):
    """User plus system CPU time of `pids`, all threads included; processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / TICKS


def rss_mib(pid):
    """Resident memory of one process, in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def segments_sent(pids, port):
    """{connection: TCP data segments sent} for the established connections of `pids` to `port`, from the
    kernel's tcp_info as `ss` shows it. On loopback an HTTP request of a few KiB goes out as one segment."""
    answer = subprocess.run(["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
                            capture_output=True, text=True, check=True)
    wanted, sent, owner = {str(pid) for pid in pids}, {}, None
    for line in answer.stdout.splitlines():
        if not line[:1].isspace():  # a connection's line; its tcp_info follows on the next, indented
            fields = line.split()
            owner = fields[2] if wanted & set(re.findall(r"pid=(\d+)", line)) else None
        elif owner:
            found = re.search(r"\bdata_segs_out:(\d+)", line)
            sent[owner] = int(found.group(1)) if found else 0
    return sent


def machine_busy_seconds():
    """CPU time spent by the whole machine, all cores, since boot (not idle, not waiting for I/O)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def listening_pid(port):
    """The process that listens on TCP `port` (IPv4 or IPv6), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except FileNotFoundError:
            continue
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None
