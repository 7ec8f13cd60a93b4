"""Benchmark: throughput and latency of POST /fetchPersonas under concurrent clients.

Usage: .venv/bin/python bench/http_load.py [--clients 50] [--seconds 30] [--workers 2]
       [--generator wrk|python] [--out FILE.json]

Over the PERSONA_HOME (and store URLs) of the environment, which must hold a full rebuild:
1. baseline in the same run: the same varied top-20 requests answered in-process, one after another
   (``fetch_personas``), as requests per second;
2. ``persona serve --workers W`` on a free port; CLIENTS closed-loop clients, each on its own keep-alive
   connection, send varied top-20 requests (full answers) for SECONDS; a status of 400 or more is an error.
Reports requests/s, p50/p99 latency, errors, and throughput ÷ the in-process rate.

The clients run on the same machine as the server and take part of its two cores. ``--generator wrk``
(the default when Debian's ``wrk`` is installed) drives them from wrk's C event loop, a Lua script
cycling through the same bodies: a few percent of a core. ``--generator python`` runs one Python thread
per client (``http.client``), which costs the server a good share of a core and adds the clients' own
GIL waits to the latencies they record; it is kept to compare with figures measured that way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import _percentile, _varied_requests, redact


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"persona serve did not answer /health on port {port} within {timeout:.0f} s")


def _wait_all_workers_ready(server_pid: int, workers: int, timeout: float) -> None:
    """Each worker opens the index before it answers (seconds at 1M): measure once all have."""
    if workers < 2:
        return
    from persona_assets.settings import PersonaSettings
    from persona_assets.worker_load import ready_workers

    load_file = PersonaSettings.from_env().home / "tmp" / f"serve-{server_pid}.load"
    deadline = time.monotonic() + timeout
    while not (load_file.exists() and ready_workers(load_file) >= workers):
        if time.monotonic() > deadline:
            raise SystemExit(f"persona serve: not all {workers} workers were ready within {timeout:.0f} s")
        time.sleep(0.2)


def in_process_rate(requests: list[dict]) -> float:
    """Requests per second answered in-process, one at a time (the baseline)."""
    from persona_assets.query.service import fetch_personas
    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    settings = PersonaSettings.from_env()
    engine, index = relational.store_engine(settings.db_url), search_backend_for(settings)
    weights = settings.weights
    for request in requests[:20]:
        fetch_personas(request, engine, index, weights)  # warm caches
    started = time.perf_counter()
    for request in requests:
        fetch_personas(request, engine, index, weights)
    return len(requests) / (time.perf_counter() - started)


def load(port: int, requests: list[dict], clients: int, seconds: float) -> dict:
    bodies = [json.dumps(r).encode() for r in requests]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def client(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = number
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += clients
            started = time.perf_counter()
            try:
                conn.request("POST", "/fetchPersonas", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors[number].append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as error:
                errors[number].append(type(error).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            latencies[number].append((time.perf_counter() - started) * 1000)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    all_ms = [ms for per_client in latencies for ms in per_client]
    all_errors = [e for per_client in errors for e in per_client]
    client_medians = [_percentile(per_client, 0.5) for per_client in latencies if per_client]
    return {
        "requests": len(all_ms),
        "requests_per_second": round(len(all_ms) / elapsed, 1),
        "p50_ms": round(_percentile(all_ms, 0.5), 1) if all_ms else None,
        "p99_ms": round(_percentile(all_ms, 0.99), 1) if all_ms else None,
        "errors": len(all_errors),
        "error_kinds": sorted(set(all_errors)),
        # how evenly the server shares itself: the lowest and highest of the clients' median latencies
        "client_p50_ms_range": [round(f(client_medians), 1) for f in (min, max)] if client_medians else None,
    }


#: wrk's Lua script: each thread cycles through the bodies (one JSON request per line of the file named by
#: PERSONA_BENCH_BODIES), each from its own line; the summary is printed as one JSON line after the run.
_WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("PERSONA_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
local threads, next_body = 0, nil
function setup(thread)
  threads = threads + 1
  thread:set("first_body", threads * 499)
end
function request()
  next_body = (next_body or first_body) % #bodies + 1
  return wrk.format("POST", "/fetchPersonas", headers, bodies[next_body])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "status": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def load_with_wrk(port: int, requests: list[dict], clients: int, seconds: float) -> dict:
    """The same closed loop as :func:`load`, driven by wrk (two threads, or one for one client; a connection
    per client)."""
    with tempfile.TemporaryDirectory() as tmp:
        bodies, script = Path(tmp) / "bodies.jsonl", Path(tmp) / "fetch.lua"
        bodies.write_text("".join(json.dumps(r) + "\n" for r in requests))
        script.write_text(_WRK_SCRIPT)
        command = [
            "wrk",
            f"-t{min(2, clients)}",
            f"-c{clients}",
            f"-d{seconds:.0f}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
        ]
        output = subprocess.run(
            [*command, f"http://127.0.0.1:{port}"],
            env={**os.environ, "PERSONA_BENCH_BODIES": str(bodies)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    summary = json.loads(output.strip().splitlines()[-1])
    errors = {kind: summary[kind] for kind in ("status", "connect", "read", "write", "timeout") if summary[kind]}
    return {
        "requests": summary["requests"],
        "requests_per_second": round(summary["requests"] / (summary["duration_us"] / 1e6), 1),
        "p50_ms": round(summary["p50_us"] / 1000, 1),
        "p99_ms": round(summary["p99_us"] / 1000, 1),
        "errors": sum(errors.values()),
        "error_kinds": sorted(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--generator",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="what drives the clients (default: wrk when installed)",
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    drive = load_with_wrk if args.generator == "wrk" else load

    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational

    engine = relational.store_engine(PersonaSettings.from_env().db_url)
    requests = _varied_requests(engine, 1000, 11)
    print("baseline: in-process, one request at a time", file=sys.stderr, flush=True)
    baseline = in_process_rate(requests[:300])

    port = _free_port()
    persona = str(Path(sys.executable).with_name("persona"))
    server = subprocess.Popen(
        [persona, "serve", "--port", str(port), "--workers", str(args.workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(port, 120)
        _wait_all_workers_ready(server.pid, args.workers, 300)
        load(port, requests, min(args.clients, 4), 3)  # warm every worker's caches
        print(f"{args.clients} clients ({args.generator}) for {args.seconds:.0f} s", file=sys.stderr, flush=True)
        measured = drive(port, requests, args.clients, args.seconds)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    result = {
        "command": " ".join([".venv/bin/python", "bench/http_load.py", *map(redact, sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "stores": {"db": redact(PersonaSettings.from_env().db_url), "search": os.environ.get("PERSONA_OPENSEARCH_URL")},
        "clients": args.clients,
        "generator": args.generator,
        "workers": args.workers,
        "seconds": args.seconds,
        **measured,
        "baseline_in_process_requests_per_second": round(baseline, 1),
        "http_over_in_process": round(measured["requests_per_second"] / baseline, 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if measured["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
