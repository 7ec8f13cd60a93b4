"""A throwaway, real OpenSearch node (Lucene, Painless, REST API) in one JVM on loopback, or a cluster of them.

The node is built once from Maven Central artifacts (``opensearch_build``). ``start(home)`` runs one node,
a single-node cluster. ``start(home, nodes=3)`` runs three JVMs that find each other on their loopback
transport ports and form one cluster (``persona services up --opensearch-nodes 3``): the index's shards
and replicas spread over them, and a node can stop without losing a query or a publish.

Layout: node 1 under ``HOME/services/opensearch/``, node i > 1 under ``HOME/services/opensearch-<i>/``,
each with ``data/``, ``logs/opensearch.log`` (the node's log), ``config/``, ``tmp/``, ``opensearch.pid``,
``opensearch.port`` and ``opensearch.transport``; ``HOME/services/opensearch/cluster.json`` records how many
nodes the cluster has. A cluster's URL lists every node, comma-separated (the client spreads requests
over them and fails over).

Environment knobs:

- ``PERSONA_OPENSEARCH_HEAP``: ``MAX`` (e.g. ``2g``; ``-Xms`` stays at most 512m) or ``MIN:MAX``; default
  ``512m:1g``, per node.
- ``PERSONA_OPENSEARCH_JAVA_OPTS``: extra JVM options, split on whitespace.
- ``PERSONA_OPENSEARCH_START_TIMEOUT``: seconds to wait for the node or the cluster (default 180).
- and the build's (``opensearch_build``): ``PERSONA_JAVA_HOME``, ``PERSONA_SERVICES_CACHE``, ``PERSONA_MAVEN_REPO``.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from persona_assets.services._process import (
    ServiceStatus,
    file_lock,
    free_port,
    pid_alive,
    pid_matches,
    port_is_free,
    read_int,
    say,
    spawn,
    stop_service,
    tail,
    terminate,
    write_text_atomic,
)
from persona_assets.services.opensearch_build import NAME, OPENSEARCH_VERSION, build, find_java_home

MAIN_CLASS = "persona.opensearch.Main"
DEFAULT_HEAP = "512m:1g"
CLUSTER_FILE = "cluster.json"


# --- layout -------------------------------------------------------------------------------------


def service_dir(home: str | os.PathLike[str]) -> Path:
    return Path(home).expanduser().resolve() / "services" / NAME


def _pid_file(sdir: Path) -> Path:
    return sdir / "opensearch.pid"


def _port_file(sdir: Path) -> Path:
    return sdir / "opensearch.port"


def _transport_file(sdir: Path) -> Path:
    return sdir / "opensearch.transport"


def node_dir(home: str | os.PathLike[str], number: int) -> Path:
    """Where node ``number`` (1-based) of the cluster lives; node 1 is where the single node always lived."""
    base = service_dir(home)
    return base if number == 1 else base.with_name(f"{NAME}-{number}")


def cluster_size(home: str | os.PathLike[str]) -> int:
    """How many nodes the services under ``home`` were last started with (1 when never recorded)."""
    try:
        return int(json.loads((service_dir(home) / CLUSTER_FILE).read_text())["nodes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def log_path(home: str | os.PathLike[str]) -> Path:
    return service_dir(home) / "logs" / "opensearch.log"


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# --- HTTP probes ----------------------------------------------------------------------------------


def _get_json(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                return None
            return json.loads(response.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _health(port: int, wait: bool = False) -> str | None:
    """Cluster health colour, or None when the node doesn't answer."""
    query = "?wait_for_status=yellow&timeout=2s" if wait else ""
    health = _get_json(f"{_url(port)}/_cluster/health{query}", timeout=5.0)
    if not health:
        return None
    status = health.get("status")
    return status if isinstance(status, str) else None


def _ready(port: int) -> bool:
    root = _get_json(f"{_url(port)}/")
    if not root or "version" not in root:
        return False
    return _health(port, wait=True) in ("yellow", "green")


# --- lifecycle ------------------------------------------------------------------------------------


def _heap_options() -> list[str]:
    text = (os.environ.get("PERSONA_OPENSEARCH_HEAP") or DEFAULT_HEAP).strip()
    if ":" in text:
        low, high = (part.strip() for part in text.split(":", 1))
    else:
        high = text
        low = "512m" if _bytes(high) > _bytes("512m") else high
    for value in (low, high):
        if not re.fullmatch(r"\d+[kKmMgG]?", value):
            raise ValueError(f"PERSONA_OPENSEARCH_HEAP: {text!r} is not SIZE or MIN:MAX (e.g. 1g or 512m:1g)")
    return [f"-Xms{low}", f"-Xmx{high}"]


def _bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    size = size.strip().lower()
    if size and size[-1] in units:
        return int(size[:-1]) * units[size[-1]]
    return int(size)


def _java_command(
    build: Path, sdir: Path, http_port: int, transport_port: int, cluster: tuple[str, str, str] | None = None
) -> list[str]:
    """``cluster``: (this node's name, every node's transport port, every node's name), comma-separated."""
    java_home_file = build / "JAVA_HOME"
    java_home = Path(java_home_file.read_text().strip()) if java_home_file.exists() else find_java_home()
    if os.environ.get("PERSONA_JAVA_HOME"):
        java_home = Path(os.environ["PERSONA_JAVA_HOME"])
    logs = sdir / "logs"
    return [
        str(java_home / "bin" / "java"),
        *_heap_options(),
        "-XX:+UseG1GC",
        "-XX:-OmitStackTraceInFastThrow",
        f"-XX:ErrorFile={logs}/hs_err_pid%p.log",
        "-Djava.awt.headless=true",
        "-Dfile.encoding=UTF-8",
        "-Djava.locale.providers=SPI,COMPAT",
        "-Djna.nosys=true",
        "-Dio.netty.noUnsafe=true",
        "-Dio.netty.noKeySetOptimization=true",
        "-Dio.netty.recycler.maxCapacityPerThread=0",
        "-Dlog4j.shutdownHookEnabled=false",
        "-Dlog4j2.disable.jmx=true",
        f"-Djava.io.tmpdir={sdir / 'tmp'}",
        *os.environ.get("PERSONA_OPENSEARCH_JAVA_OPTS", "").split(),
        "-cp",
        f"{build / 'target' / 'classes'}:{build / 'target' / 'lib' / '*'}",
        MAIN_CLASS,
        str(sdir),
        str(http_port),
        str(transport_port),
        *(cluster or ()),
    ]


def _running_pid(sdir: Path) -> int | None:
    pid = read_int(_pid_file(sdir))
    return pid if pid_matches(pid, MAIN_CLASS, str(sdir)) else None


def _wait_ready(pid: int, port: int, sdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise RuntimeError(
                f"{NAME}: the node (pid {pid}) exited while starting; last log lines:\n{tail(sdir / 'logs' / 'opensearch.log')}"
            )
        if _ready(port):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"{NAME}: no healthy answer on {_url(port)} within {timeout:.0f}s; last log lines:\n{tail(sdir / 'logs' / 'opensearch.log')}"
    )


def start(home: str | os.PathLike[str], *, nodes: int = 1, timeout: float | None = None) -> str:
    """Start the node, or a cluster of ``nodes`` (or find it running); return its URL (a cluster's: every
    node's, comma-separated) once it answers with health yellow or green and, for a cluster, every node
    has joined.

    A home whose nodes hold data of a cluster of another size is refused: the nodes' state names their
    cluster, so starting them with another size would not form one (``persona services down``, then
    remove ``HOME/services/opensearch*/``, or use another ``PERSONA_HOME``)."""
    if nodes < 1:
        raise ValueError(f"an OpenSearch cluster needs at least 1 node, got {nodes}")
    timeout = float(os.environ.get("PERSONA_OPENSEARCH_START_TIMEOUT", "180")) if timeout is None else timeout
    recorded = cluster_size(home)
    if recorded != nodes and _holds_data(home, recorded):
        raise RuntimeError(
            f"{NAME}: the nodes under {service_dir(home).parent} hold a {recorded}-node cluster's data; to run "
            f"{nodes} node(s), stop them (persona services down) and remove {service_dir(home)}* (their indices "
            "are lost), or use another PERSONA_HOME"
        )
    if nodes == 1:
        url = _start_single(home, timeout)
        (service_dir(home) / CLUSTER_FILE).unlink(missing_ok=True)
        return url
    return _start_cluster(home, nodes, timeout)


def _holds_data(home: str | os.PathLike[str], nodes: int) -> bool:
    return any(
        (node_dir(home, number) / "data").is_dir() and any((node_dir(home, number) / "data").iterdir())
        for number in range(1, nodes + 1)
    )


def _start_single(home: str | os.PathLike[str], timeout: float) -> str:
    sdir = service_dir(home)
    with file_lock(sdir / ".lock"):
        pid = _running_pid(sdir)
        port = read_int(_port_file(sdir))
        if pid and port:
            if _ready(port):
                say(NAME, f"already running (pid {pid}) at {_url(port)}")
                return _url(port)
            say(NAME, f"pid {pid} is running but not healthy yet; waiting")
            try:
                _wait_ready(pid, port, sdir, timeout)
                return _url(port)
            except (RuntimeError, TimeoutError) as error:
                say(NAME, f"{error}\nrestarting it")
                terminate(pid, timeout=30, service=NAME)

        built = build()
        for directory in ("data", "logs", "config", "tmp"):
            (sdir / directory).mkdir(parents=True, exist_ok=True)
        last_error: Exception | None = None
        for _attempt in range(2):  # a second try covers losing a race for the chosen free ports
            http_port = port if port and port_is_free(port) else free_port()
            transport_port = free_port()
            while transport_port == http_port:
                transport_port = free_port()
            command = _java_command(built, sdir, http_port, transport_port)
            say(
                NAME,
                f"starting OpenSearch {OPENSEARCH_VERSION} on {_url(http_port)} ({' '.join(_heap_options())}); log: {sdir / 'logs' / 'opensearch.log'}",
            )
            started = time.monotonic()
            process = spawn(command, log_path=sdir / "logs" / "opensearch.log", cwd=sdir)
            write_text_atomic(_pid_file(sdir), f"{process.pid}\n")
            write_text_atomic(_port_file(sdir), f"{http_port}\n")
            try:
                _wait_ready(process.pid, http_port, sdir, timeout)
            except RuntimeError as error:
                last_error = error
                port = None
                continue
            except TimeoutError:
                terminate(process.pid, timeout=30, service=NAME)
                raise
            say(NAME, f"ready at {_url(http_port)} after {time.monotonic() - started:.1f}s (pid {process.pid})")
            return _url(http_port)
        assert last_error is not None
        raise last_error


def _start_cluster(home: str | os.PathLike[str], nodes: int, timeout: float) -> str:
    """Start ``nodes`` JVMs that form one cluster (or find them all running in it)."""
    dirs = [node_dir(home, number) for number in range(1, nodes + 1)]
    with file_lock(dirs[0] / ".lock"):
        pids = [_running_pid(d) for d in dirs]
        ports = [port for port in (read_int(_port_file(d)) for d in dirs) if port]
        if all(pids) and len(ports) == nodes and _cluster_nodes(ports[0]) == nodes:
            say(NAME, f"a {nodes}-node cluster is already running at {_urls(ports)}")
            return _urls(ports)
        for pid in pids:  # some are missing: start them all again, on their data
            if pid:
                terminate(pid, timeout=30, service=NAME)
        built = build()
        taken: set[int] = set()
        http_ports = [_port(read_int(_port_file(d)), taken) for d in dirs]
        transport_ports = [_port(read_int(_transport_file(d)), taken) for d in dirs]
        names = [f"persona-node-{number}" for number in range(1, nodes + 1)]
        write_text_atomic(dirs[0] / CLUSTER_FILE, json.dumps({"nodes": nodes}) + "\n")
        say(NAME, f"starting a {nodes}-node OpenSearch {OPENSEARCH_VERSION} cluster ({' '.join(_heap_options())} each)")
        started = time.monotonic()
        processes = []
        for number, sdir in enumerate(dirs):
            for directory in ("data", "logs", "config", "tmp"):
                (sdir / directory).mkdir(parents=True, exist_ok=True)
            membership = (names[number], ",".join(map(str, transport_ports)), ",".join(names))
            command = _java_command(built, sdir, http_ports[number], transport_ports[number], membership)
            process = spawn(command, log_path=sdir / "logs" / "opensearch.log", cwd=sdir)
            write_text_atomic(_pid_file(sdir), f"{process.pid}\n")
            write_text_atomic(_port_file(sdir), f"{http_ports[number]}\n")
            write_text_atomic(_transport_file(sdir), f"{transport_ports[number]}\n")
            processes.append(process)
        try:
            for sdir, process, port in zip(dirs, processes, http_ports, strict=True):
                _wait_ready(process.pid, port, sdir, max(1.0, timeout - (time.monotonic() - started)))
            _wait_joined(http_ports[0], nodes, dirs[0], max(1.0, timeout - (time.monotonic() - started)))
        except (RuntimeError, TimeoutError):
            for process in processes:
                terminate(process.pid, timeout=30, service=NAME)
            raise
        say(NAME, f"{nodes} nodes ready at {_urls(http_ports)} after {time.monotonic() - started:.1f}s")
        return _urls(http_ports)


def _port(recorded: int | None, taken: set[int]) -> int:
    """The port a node had, while it is free and not given to another node; else a fresh free one."""
    port = recorded if recorded and recorded not in taken and port_is_free(recorded) else free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    return port


def _urls(ports: list[int]) -> str:
    return ",".join(_url(port) for port in ports)


def _cluster_nodes(port: int) -> int | None:
    health = _get_json(f"{_url(port)}/_cluster/health", timeout=5.0)
    count = health.get("number_of_nodes") if health else None
    return count if isinstance(count, int) else None


def _wait_joined(port: int, nodes: int, sdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _cluster_nodes(port) == nodes:
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"{NAME}: the cluster at {_url(port)} has {_cluster_nodes(port)} of {nodes} nodes after {timeout:.0f}s; "
        f"last log lines:\n{tail(sdir / 'logs' / 'opensearch.log')}"
    )


def stop(home: str | os.PathLike[str], *, timeout: float = 30.0) -> bool:
    """Stop every node: SIGTERM (the JVM closes the node), wait, then SIGKILL. True if any was running."""
    stopped = [stop_node(home, number, timeout=timeout) for number in range(cluster_size(home), 0, -1)]
    return any(stopped)


def stop_node(home: str | os.PathLike[str], number: int, *, timeout: float = 30.0) -> bool:
    """Stop one node of the cluster (the others go on without it). True if it was running."""
    sdir = node_dir(home, number)
    return stop_service(
        sdir, NAME, pid_file=_pid_file(sdir), port_file=_port_file(sdir), running_pid=_running_pid, timeout=timeout
    )


def url(home: str | os.PathLike[str]) -> str | None:
    """The URL of the running node (a cluster's: its running nodes', comma-separated), or None when none
    runs (never starts anything)."""
    ports = []
    for number in range(1, cluster_size(home) + 1):
        sdir = node_dir(home, number)
        port = read_int(_port_file(sdir))
        if port and _running_pid(sdir):
            ports.append(port)
    return _urls(ports) if ports else None


def status(home: str | os.PathLike[str]) -> ServiceStatus:
    sdir = service_dir(home)
    pid = _running_pid(sdir)
    port = read_int(_port_file(sdir))
    if pid is None or port is None:
        return ServiceStatus(NAME, False, None, None, "stopped")
    root = _get_json(f"{_url(port)}/")
    if not root:
        return ServiceStatus(NAME, True, pid, url(home), "process running, HTTP not answering")
    version = root.get("version", {})
    number = version.get("number") if isinstance(version, dict) else None
    nodes = cluster_size(home)
    members = f", {_cluster_nodes(port)} of {nodes} nodes" if nodes > 1 else ""
    return ServiceStatus(
        NAME, True, pid, url(home), f"OpenSearch {number}, health {_health(port) or 'unknown'}{members}"
    )
