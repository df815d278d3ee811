#!/usr/bin/env python3
"""request.py — a chitd consumer in Python 3, standard library only.

As a script:

    request.py [--timeout SECONDS] [--deliver DIR] SPOOL SHA256 SIZE PATH [URL]...

drops one chit into SPOOL/request/ and waits until chitd has dealt with it.
Prints PATH (or DIR/PATH with --deliver / DELIVER=DIR) and exits 0 once
SPOOL/downloaded/NAME appears; prints the chit's last "# error:" reason on
stderr and exits 1 once SPOOL/fail/NAME appears; exits 124 on timeout
(--timeout, or TIMEOUT=SECONDS in the environment); 2 on usage errors.

As a module:

    from request import request, ChitFailed
    request(spool, sha256, size, path, urls=(), timeout=None) -> path

returns `path` (joined to `deliver` when given) once the file is delivered,
raises ChitFailed (with .reason) when chitd failed the chit, and
ChitTimeout (a TimeoutError) when `timeout` seconds pass first. The lower
level `drop()` and `wait()` are exported too.

The chit is written as SPOOL/request/.NAME and then renamed to
SPOOL/request/NAME, so chitd never sees a partial chit under its final name.
Nothing is created outside SPOOL. Waiting polls the two state directories,
starting at 1 ms between looks and backing off to 50 ms.
"""

import argparse
import os
import re
import sys
import time

__all__ = ["ChitFailed", "ChitTimeout", "drop", "request", "wait"]

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ChitFailed(Exception):
    """chitd moved the chit to fail/; `reason` is its last `# error:` line."""

    def __init__(self, name, path, reason):
        super().__init__(f"{path} failed: {reason}")
        self.name = name
        self.path = path
        self.reason = reason


class ChitTimeout(TimeoutError):
    """The chit was not terminal before the deadline (it stays in the spool)."""

    def __init__(self, name, timeout):
        super().__init__(f"timed out after {timeout} s waiting for chit {name}")
        self.name = name
        self.timeout = timeout


def _check(sha256, size, path, urls):
    for value in (sha256, str(size), path, *urls):
        if "\n" in value or "\r" in value:
            raise ValueError("chit fields may not contain line breaks")
    if not _HEX64.match(sha256):
        raise ValueError(f"SHA256 must be 64 hex digits: {sha256!r}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"SIZE must not be negative: {size}")
    elif not str(size).isdigit() or not str(size).isascii():
        raise ValueError(f"SIZE must be a decimal byte count: {size!r}")
    if not path:
        raise ValueError("PATH may not be empty")


def _chit_name(spool, path):
    base = _UNSAFE.sub("_", os.path.basename(path))[:100].lstrip(".") or "chit"
    stem = f"{base}-{os.getpid()}-{time.time_ns()}"
    name, n = stem, 0
    while any(
        os.path.lexists(os.path.join(spool, d, p))
        for d in ("request", "fetch", "downloaded", "fail")
        for p in (name, "." + name)
    ):
        n += 1
        name = f"{stem}-{n}"
    return name


def drop(spool, sha256, size, path, urls=()):
    """Write a chit atomically into SPOOL/request/ and return its name."""
    urls = list(urls)
    _check(sha256, size, path, urls)
    if not os.path.isdir(spool):
        raise FileNotFoundError(f"spool directory not found: {spool}")
    request_dir = os.path.join(spool, "request")
    os.makedirs(request_dir, exist_ok=True)
    name = _chit_name(spool, path)
    tmp = os.path.join(request_dir, "." + name)
    text = "".join(f"{line}\n" for line in [sha256, str(size), path, *urls])
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.rename(tmp, os.path.join(request_dir, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return name


def _error_reason(chit_file):
    reason = None
    with open(chit_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"#\s*error:\s*(.*?)\s*\Z", line)
            if m:
                reason = m.group(1)
    return reason or "no reason given"


def wait(spool, name, timeout=None):
    """Wait until chit NAME is terminal.

    Returns ("downloaded", None) or ("fail", reason); raises ChitTimeout.
    """
    downloaded = os.path.join(spool, "downloaded", name)
    failed = os.path.join(spool, "fail", name)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while True:
        if os.path.exists(downloaded):
            return "downloaded", None
        if os.path.exists(failed):
            return "fail", _error_reason(failed)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise ChitTimeout(name, timeout)
        step = pause if deadline is None else min(pause, deadline - now)
        time.sleep(max(step, 0))
        pause = min(pause * 2, 0.05)


def request(spool, sha256, size, path, urls=(), timeout=None, deliver=None):
    """Drop a chit and wait for it; return the delivered path.

    The result is `path` as given, or os.path.join(deliver, path) when the
    consumer's delivery directory is passed.
    """
    name = drop(spool, sha256, size, path, urls)
    state, reason = wait(spool, name, timeout)
    if state == "fail":
        raise ChitFailed(name, path, reason)
    return os.path.join(deliver, path) if deliver else path


def main(argv=None):
    env_timeout = os.environ.get("TIMEOUT") or None
    try:
        env_timeout = float(env_timeout) if env_timeout else None
    except ValueError:
        print(f"request.py: TIMEOUT must be a number of seconds: {env_timeout}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="request.py",
        description="Drop a chit into SPOOL/request/ and wait until chitd has "
        "delivered the file (exit 0, prints its path) or failed it (exit 1, "
        "prints the reason); exit 124 on timeout.",
    )
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        default=env_timeout,
                        help="give up waiting after SECONDS (default: $TIMEOUT or never)")
    parser.add_argument("--deliver", metavar="DIR", default=os.environ.get("DELIVER") or None,
                        help="the consumer's delivery dir, to print the full path (default: $DELIVER)")
    parser.add_argument("spool")
    parser.add_argument("sha256")
    parser.add_argument("size")
    parser.add_argument("path")
    parser.add_argument("urls", nargs="*", metavar="URL")
    args = parser.parse_args(argv)
    try:
        delivered = request(args.spool, args.sha256, args.size, args.path, args.urls,
                            timeout=args.timeout, deliver=args.deliver)
    except (ValueError, FileNotFoundError) as e:
        print(f"request.py: {e}", file=sys.stderr)
        return 2
    except ChitFailed as e:
        print(f"request.py: {e}", file=sys.stderr)
        return 1
    except ChitTimeout as e:
        print(f"request.py: {e}", file=sys.stderr)
        return 124
    print(delivered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
