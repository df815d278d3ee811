#!/usr/bin/env python3
"""benchtool.py — the Python half of the chitd benchmarks (stdlib only).

Subcommands (used by lib.sh and the *.sh benchmarks; see each --help):

  free-port                 print an unused TCP port on 127.0.0.1
  gen-files DIR COUNT SIZE  make COUNT random files of SIZE bytes (cached:
                            kept if DIR/manifest.tsv already matches)
  chits MANIFEST OUTDIR     write chits for the files of a manifest
  drive burst|serial        rename prepared chits into SPOOL/request/ and time
                            their arrival in SPOOL/downloaded/ (inotify via
                            ctypes, polling as a fallback)
  report RESULTS            print a timing table (plain + markdown)
  latency-report FILES...   print a latency table (plain + markdown)
  resume-report FILES...    print the re-fetched bytes table of resume.sh
  rss-report ROWS           print the peak-RSS table of memory.sh

Times in RESULTS are lines "label<TAB>seconds seconds ...".
"""

import argparse
import ctypes
import errno
import hashlib
import os
import select
import socket
import struct
import sys
import time

# --------------------------------------------------------------------------
# small helpers


def free_port(_args):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def gen_files(args):
    """Random distinct files plus manifest.tsv (sha256, size, name)."""
    os.makedirs(args.dir, exist_ok=True)
    manifest = os.path.join(args.dir, "manifest.tsv")
    want = f"# count={args.count} size={args.size} prefix={args.prefix}\n"
    try:
        with open(manifest) as f:
            if f.readline() == want:
                return
    except FileNotFoundError:
        pass
    lines = [want]
    for i in range(args.count):
        name = f"{args.prefix}{i:06d}.bin"
        data = os.urandom(args.size)
        with open(os.path.join(args.dir, name), "wb") as f:
            f.write(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}\t{args.size}\t{name}\n")
    tmp = manifest + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.rename(tmp, manifest)


def read_manifest(path):
    entries = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            sha, size, name = line.rstrip("\n").split("\t")
            entries.append((sha, int(size), name))
    return entries


def chits(args):
    """One chit per file (or --count chits cycling over the files).

    Chit names are NAME_PREFIX + 6-digit index; the delivery path is
    --path-format with {i} (index), {group} (index // 1000) and {name} (the
    file's name).
    """
    entries = read_manifest(args.manifest)
    os.makedirs(args.outdir, exist_ok=True)
    count = args.count or len(entries)
    for i in range(count):
        sha, size, name = entries[i % len(entries)]
        path = args.path_format.format(i=i, name=name, group=i // 1000)
        lines = [sha, str(size), path]
        if args.url_base:
            lines.append(f"{args.url_base.rstrip('/')}/{name}")
        with open(os.path.join(args.outdir, f"{args.name_prefix}{i:06d}"), "w") as f:
            f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# watching a state directory

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")


class Arrivals:
    """Names that appear in DIR (renamed or created), via inotify if possible."""

    def __init__(self, directory):
        self.directory = directory
        self.fd = None
        self.overflowed = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            wd = libc.inotify_add_watch(fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO)
            if wd < 0:
                os.close(fd)
                raise OSError(ctypes.get_errno(), "inotify_add_watch")
            self.fd = fd
            self.poller = select.poll()
            self.poller.register(fd, select.POLLIN)
        except (OSError, AttributeError) as e:
            print(f"benchtool: inotify unavailable ({e}); polling {directory}", file=sys.stderr)

    def wait(self, timeout):
        """Names that arrived, waiting at most `timeout` s; None = rescan needed."""
        if self.fd is None:
            time.sleep(min(timeout, 0.0005))
            return None
        if not self.poller.poll(max(0, int(timeout * 1000))):
            return []
        try:
            buf = os.read(self.fd, 1 << 20)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return []
            raise
        names, off = [], 0
        while off < len(buf):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
            off += _EVENT.size
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
            if length:
                names.append(os.fsdecode(buf[off:off + length].rstrip(b"\0")))
            off += length
        if self.overflowed:
            self.overflowed = False
            return None
        return names

    def listing(self):
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []


def _error_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "?"
    except OSError as e:
        return str(e)


def drive(args):
    request = os.path.join(args.spool, "request")
    downloaded = os.path.join(args.spool, "downloaded")
    fail = os.path.join(args.spool, "fail")
    for d in (request, downloaded, fail):
        os.makedirs(d, exist_ok=True)
    done = Arrivals(downloaded)
    failed = Arrivals(fail)
    deadline_for = lambda: time.monotonic() + args.timeout  # noqa: E731

    def check_failed():
        bad = [n for n in failed.listing() if not n.startswith(".")]
        if bad:
            sys.exit(f"benchtool: {len(bad)} chit(s) failed, e.g. {bad[0]}: "
                     f"{_error_line(os.path.join(fail, bad[0]))}")

    def wait_for(names, deadline):
        """Block until every name in `names` (a set, emptied) is in downloaded/."""
        last_look = time.monotonic()
        while names:
            got = done.wait(min(0.05, max(0, deadline - time.monotonic())))
            if got is None:  # no inotify, or its queue overflowed: look
                if len(names) == 1:
                    names.difference_update(
                        [n for n in names if os.path.exists(os.path.join(downloaded, n))])
                else:
                    names.difference_update(done.listing())
            else:
                names.difference_update(got)
            now = time.monotonic()
            if names and now - last_look > 0.5:
                last_look = now
                names.difference_update(done.listing())
                check_failed()
                if now > deadline:
                    sys.exit(f"benchtool: timed out with {len(names)} chit(s) not downloaded")

    def one(staging, name):
        t0 = time.perf_counter()
        os.rename(os.path.join(staging, name), os.path.join(request, name))
        wait_for({name}, deadline_for())
        return time.perf_counter() - t0

    if args.warmup_staging:
        for name in sorted(os.listdir(args.warmup_staging)):
            one(args.warmup_staging, name)
    names = sorted(n for n in os.listdir(args.staging) if not n.startswith("."))
    if args.mode == "serial":
        latencies = [one(args.staging, n) for n in names]
        with open(args.out, "w") as f:
            f.writelines(f"{x * 1000:.4f}\n" for x in latencies)
        print(f"{len(latencies)} chits one at a time, p50 "
              f"{percentile(latencies, 50) * 1000:.3f} ms", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        for n in names:
            os.rename(os.path.join(args.staging, n), os.path.join(request, n))
        wait_for(set(names), deadline_for())
        elapsed = time.perf_counter() - t0
        if args.out:
            with open(args.out, "w") as f:
                f.write(f"{elapsed:.6f}\n")
        print(f"{elapsed:.6f}")


# --------------------------------------------------------------------------
# tables


def percentile(values, p):
    """Nearest-rank percentile (p50 of an even count: the upper middle)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _numeric(cell):
    try:
        float(str(cell).rstrip("%"))
        return True
    except ValueError:
        return str(cell) == "-"


def print_tables(title, header, rows, notes):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    numeric = [i > 0 and all(_numeric(r[i]) for r in rows) for i in range(len(header))]
    print()
    print(f"== {title} ==")
    for r in [header] + rows:
        print("  ".join(str(c).rjust(w) if numeric[i] else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    for n in notes:
        print(n)
    print()
    print("Markdown (for BENCHMARKS.md):")
    print()
    print(f"**{title}**")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if numeric[i] else "---" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(f"`{r[0]}`" if i == 0 else str(c) for i, c in enumerate(r)) + " |")
    if notes:
        print()
        for n in notes:
            print(n)
    print()


def fmt(x, digits=3):
    if x != x:  # nan
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def report(args):
    results = []
    with open(args.results) as f:
        for line in f:
            label, _, times = line.rstrip("\n").partition("\t")
            results.append((label, [float(t) for t in times.split()]))
    medians = {label: median(t) for label, t in results if t}
    baselines = [b for b in args.baseline if b in medians]
    header = ["command", "runs", "min s", "median s", "max s"]
    if args.count:
        header.append(f"{args.unit}/s")
    if args.bytes:
        header.append("MB/s")
    header += [f"x {b}" for b in baselines]
    # --best NAME LABEL...: the fastest (by median) of those labels.
    bests = []
    for name, *labels in args.best:
        measured = [b for b in labels if b in medians]
        if measured:
            bests.append((name, min(measured, key=lambda b: medians[b])))
    header += [f"x {name}" for name, _ in bests]
    rows = []
    for label, times in results:
        if not times:
            continue
        m = medians[label]
        row = [label, len(times), fmt(min(times)), fmt(m), fmt(max(times))]
        if args.count:
            row.append(fmt(args.count / m, 1))
        if args.bytes:
            row.append(fmt(args.bytes / m / 1e6, 1))
        row += [fmt(m / medians[b], 2) for b in baselines]
        row += [fmt(m / medians[b], 2) for _, b in bests]
        rows.append(row)
    notes = list(args.note)
    if baselines or bests:
        notes.append("x B = median time / median time of B (below 1: faster than B).")
    for name, b in bests:
        notes.append(f"{name}: `{b}` ({fmt(medians[b])} s).")
    print_tables(args.title, header, rows, notes)


def latency_report(args):
    series = []
    for spec in args.files:
        label, _, path = spec.partition("=")
        with open(path) as f:
            series.append((label, [float(x) for x in f if x.strip()]))
    p50 = {label: percentile(v, 50) for label, v in series}
    p99 = {label: percentile(v, 99) for label, v in series}
    baselines = [b for b in args.baseline if b in p50]
    header = ["command", "chits", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    for b in baselines:
        header += [f"p50 x {b}", f"p99 x {b}"]
    rows = []
    for label, v in series:
        row = [label, len(v), fmt(p50[label]), fmt(percentile(v, 90)), fmt(p99[label]), fmt(max(v))]
        for b in baselines:
            row += [fmt(p50[label] / p50[b], 2), fmt(p99[label] / p99[b], 2)]
        rows.append(row)
    notes = list(args.note)
    if baselines:
        notes.append("x B = latency / latency of B at the same percentile (below 1: faster).")
    print_tables(args.title, header, rows, notes)


def resume_report(args):
    """Rows of "refetched on_disk requests" per round, one file per tool."""
    header = ["command", "rounds", "min re-fetched B", "median re-fetched B",
              "max re-fetched B", "median of file", "on disk at kill (median)", "requests (median)"]
    rows = []
    for spec in args.files:
        label, _, path = spec.partition("=")
        with open(path) as f:
            rounds = [[int(x) for x in line.split()] for line in f if line.strip()]
        refetched = sorted(r[0] for r in rounds)
        med = median(refetched)
        rows.append([label, len(rounds), refetched[0], f"{med:.0f}", refetched[-1],
                     f"{100 * med / args.size:.2f}%", f"{median([r[1] for r in rounds]):.0f}",
                     f"{median([r[2] for r in rounds]):.0f}"])
    print_tables(args.title, header, rows, list(args.note))


def rss_report(args):
    """Rows "label<TAB>scenario<TAB>max RSS KiB<TAB>elapsed s"."""
    header = ["command", "scenario", "peak RSS MiB", "wall s"]
    rows = []
    with open(args.rows) as f:
        for line in f:
            label, scenario, rss, elapsed = line.rstrip("\n").split("\t")
            rows.append([label, scenario, fmt(int(rss) / 1024, 1), fmt(float(elapsed), 2)])
    print_tables(args.title, header, rows, list(args.note))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("free-port")
    s.set_defaults(func=free_port)

    s = sub.add_parser("gen-files")
    s.add_argument("dir")
    s.add_argument("count", type=int)
    s.add_argument("size", type=int)
    s.add_argument("--prefix", default="f")
    s.set_defaults(func=gen_files)

    s = sub.add_parser("chits")
    s.add_argument("manifest")
    s.add_argument("outdir")
    s.add_argument("--count", type=int, default=0)
    s.add_argument("--url-base", default="")
    s.add_argument("--name-prefix", default="c")
    s.add_argument("--path-format", default="{name}")
    s.set_defaults(func=chits)

    s = sub.add_parser("drive")
    s.add_argument("mode", choices=["burst", "serial"])
    s.add_argument("--spool", required=True)
    s.add_argument("--staging", required=True, help="dir of ready chits (same filesystem)")
    s.add_argument("--warmup-staging", help="chits dropped one at a time first, not timed")
    s.add_argument("--timeout", type=float, default=600)
    s.add_argument("--out", help="serial: latencies (ms, one a line); burst: seconds")
    s.set_defaults(func=drive)

    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("--title", required=True)
    s.add_argument("--count", type=int, default=0, help="items per run, for a rate column")
    s.add_argument("--unit", default="files")
    s.add_argument("--bytes", type=int, default=0, help="bytes per run, for a MB/s column")
    s.add_argument("--baseline", action="append", default=[])
    s.add_argument("--best", action="append", nargs="+", default=[], metavar="NAME LABEL",
                   help="a column against the fastest of LABELs (by median), headed NAME")
    s.add_argument("--note", action="append", default=[])
    s.set_defaults(func=report)

    s = sub.add_parser("latency-report")
    s.add_argument("files", nargs="+", metavar="LABEL=FILE")
    s.add_argument("--title", required=True)
    s.add_argument("--baseline", action="append", default=[])
    s.add_argument("--note", action="append", default=[])
    s.set_defaults(func=latency_report)

    s = sub.add_parser("resume-report")
    s.add_argument("files", nargs="+", metavar="LABEL=FILE")
    s.add_argument("--title", required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--note", action="append", default=[])
    s.set_defaults(func=resume_report)

    s = sub.add_parser("rss-report")
    s.add_argument("rows")
    s.add_argument("--title", required=True)
    s.add_argument("--note", action="append", default=[])
    s.set_defaults(func=rss_report)

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
