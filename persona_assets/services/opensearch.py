"""A throwaway, real OpenSearch node (Lucene, Painless, REST API) in one JVM on loopback.

The node is built from Maven Central artifacts: the OpenSearch server jar plus the modules
``transport-netty4-client``, ``lang-painless``, ``analysis-common`` and ``mapper-extras-client``,
started by the tiny Java class in ``opensearch_node/`` (see its ``pom.xml``). The first start
runs ``mvn package`` in a cache directory (jars come from ``~/.m2`` or Maven Central); later
starts reuse that build.

Layout under ``HOME/services/opensearch/``: ``data/``, ``logs/opensearch.log`` (the node's log),
``config/``, ``tmp/``, ``opensearch.pid`` and ``opensearch.port``.

Environment knobs:

- ``PERSONA_OPENSEARCH_HEAP``: ``MAX`` (e.g. ``2g``; ``-Xms`` stays at most 512m) or ``MIN:MAX``; default ``512m:1g``.
- ``PERSONA_OPENSEARCH_JAVA_OPTS``: extra JVM options, split on whitespace.
- ``PERSONA_JAVA_HOME``: the JDK to build and run with (default: ``JAVA_HOME``, the ``java`` on PATH, ``/usr/lib/jvm/*``).
- ``PERSONA_SERVICES_CACHE``: where the built node lives (default ``~/.cache/persona/services``).
- ``PERSONA_MAVEN_REPO``: a Maven local repository to use instead of ``~/.m2/repository``.
- ``PERSONA_OPENSEARCH_START_TIMEOUT``: seconds to wait for the node (default 180).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from persona_assets.services._process import (
    ServiceStatus,
    apt_install,
    file_lock,
    free_port,
    is_root,
    pid_alive,
    pid_matches,
    port_is_free,
    read_int,
    run_logged,
    say,
    spawn,
    stop_service,
    tail,
    terminate,
    write_text_atomic,
)

NAME = "opensearch"
OPENSEARCH_VERSION = "2.19.6"
MAIN_CLASS = "persona.opensearch.Main"
NODE_SOURCES = Path(__file__).with_name("opensearch_node")
DEFAULT_HEAP = "512m:1g"
# OpenSearch 2.19 supports Java 11-21 officially; our Main is compiled for 17.
JAVA_MIN, JAVA_PREFERRED_MAX = 17, 21


# --- layout -------------------------------------------------------------------------------------


def service_dir(home: str | os.PathLike[str]) -> Path:
    return Path(home).expanduser().resolve() / "services" / NAME


def _pid_file(sdir: Path) -> Path:
    return sdir / "opensearch.pid"


def _port_file(sdir: Path) -> Path:
    return sdir / "opensearch.port"


def log_path(home: str | os.PathLike[str]) -> Path:
    return service_dir(home) / "logs" / "opensearch.log"


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# --- Java and Maven -------------------------------------------------------------------------------


def _java_major(java_home: Path) -> int | None:
    release = java_home / "release"
    text = None
    try:
        text = release.read_text()
    except OSError:
        java = java_home / "bin" / "java"
        if not java.exists():
            return None
        try:
            text = subprocess.run(
                [str(java), "-version"], capture_output=True, text=True, check=False, timeout=30
            ).stderr
        except (OSError, subprocess.TimeoutExpired):
            return None
    match = re.search(r'version[ =]"?(\d+)(?:\.(\d+))?', text, re.IGNORECASE)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8"
        major = int(match.group(2))
    return major


def _java_home_candidates() -> list[Path]:
    candidates: list[Path] = []
    for variable in ("PERSONA_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(variable):
            candidates.append(Path(os.environ[variable]))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent.parent)
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        candidates.extend(sorted(p for p in jvm_root.iterdir() if p.is_dir() and not p.is_symlink()))
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique and (candidate / "bin" / "java").exists():
            unique.append(candidate)
    return unique


def find_java_home() -> Path:
    """A JDK able to build and run the node: PERSONA_JAVA_HOME wins; otherwise Java 17-21 first, then newer."""
    forced = os.environ.get("PERSONA_JAVA_HOME")
    if forced:
        return Path(forced)
    found = [(home, _java_major(home)) for home in _java_home_candidates()]
    for home, major in found:
        if major is not None and JAVA_MIN <= major <= JAVA_PREFERRED_MAX and (home / "bin" / "javac").exists():
            return home
    for home, major in found:
        if major is not None and major >= JAVA_MIN and (home / "bin" / "javac").exists():
            say(
                NAME,
                f"no JDK 17-21 found; using {home} (Java {major}), which OpenSearch {OPENSEARCH_VERSION} does not officially support",
            )
            return home
    if is_root() and shutil.which("apt-get"):
        say(NAME, "no JDK 17+ found: installing openjdk-17-jdk-headless")
        apt_install(["openjdk-17-jdk-headless"], service=NAME)
        return find_java_home()
    raise RuntimeError(f"{NAME}: no JDK {JAVA_MIN}+ found; set PERSONA_JAVA_HOME")


def _maven() -> str:
    mvn = shutil.which("mvn")
    if mvn:
        return mvn
    say(NAME, "Maven (mvn) not found: installing it")
    apt_install(["maven"], service=NAME)
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError(f"{NAME}: mvn still not on PATH after installing maven")
    return mvn


def _sources_digest() -> str:
    digest = hashlib.sha256(OPENSEARCH_VERSION.encode())
    for path in sorted(NODE_SOURCES.rglob("*")):
        relative = path.relative_to(NODE_SOURCES)
        if path.is_file() and relative.parts[0] != "target":
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def cache_dir() -> Path:
    configured = os.environ.get("PERSONA_SERVICES_CACHE")
    if configured:
        return Path(configured).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona" / "services"


def build_dir() -> Path:
    return cache_dir() / f"opensearch-node-{OPENSEARCH_VERSION}-{_sources_digest()}"


def _build_is_complete(directory: Path) -> bool:
    return (directory / "BUILD_OK").exists()


def build() -> Path:
    """Build the node with Maven once (idempotent); return the build directory.

    The sources are copied into a fresh folder under the cache and ``mvn -B package`` runs there,
    downloading what ``~/.m2`` lacks from Maven Central. The folder is named after a digest of the
    sources, so an edited ``pom.xml`` or ``Main.java`` gets a new build.
    """
    target = build_dir()
    if _build_is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / ".build.lock"):
        if _build_is_complete(target):
            return target
        java_home = find_java_home()
        mvn = _maven()
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(NODE_SOURCES, staging, ignore=shutil.ignore_patterns("target"))
        command = [mvn, "-B", "-Dstyle.color=never", "package"]
        repo = os.environ.get("PERSONA_MAVEN_REPO")
        if repo:
            command.insert(1, f"-Dmaven.repo.local={Path(repo).expanduser().resolve()}")
        say(
            NAME,
            f"building the OpenSearch {OPENSEARCH_VERSION} node in {target} with {java_home} (first time: ~50 MB of jars)",
        )
        started = time.monotonic()
        env = dict(os.environ, JAVA_HOME=str(java_home))
        run_logged(command, service=NAME, env=env, cwd=staging)
        if not (staging / "target" / "lib" / f"opensearch-{OPENSEARCH_VERSION}.jar").exists():
            raise RuntimeError(
                f"{NAME}: Maven finished but {staging}/target/lib lacks opensearch-{OPENSEARCH_VERSION}.jar"
            )
        (staging / "JAVA_HOME").write_text(str(java_home) + "\n")
        (staging / "BUILD_OK").write_text(f"built in {time.monotonic() - started:.1f}s\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        say(NAME, f"build done in {time.monotonic() - started:.1f}s")
    return target


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


def _java_command(build: Path, sdir: Path, http_port: int, transport_port: int) -> list[str]:
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


def start(home: str | os.PathLike[str], *, timeout: float | None = None) -> str:
    """Start the node (or find it running) and return its URL once it answers with health yellow or green."""
    sdir = service_dir(home)
    timeout = float(os.environ.get("PERSONA_OPENSEARCH_START_TIMEOUT", "180")) if timeout is None else timeout
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


def stop(home: str | os.PathLike[str], *, timeout: float = 30.0) -> bool:
    """Stop the node: SIGTERM (the JVM closes the node), wait, then SIGKILL. True if it was running."""
    sdir = service_dir(home)
    return stop_service(
        sdir, NAME, pid_file=_pid_file(sdir), port_file=_port_file(sdir), running_pid=_running_pid, timeout=timeout
    )


def url(home: str | os.PathLike[str]) -> str | None:
    """The URL of the running node, or None when it isn't running (never starts anything)."""
    sdir = service_dir(home)
    port = read_int(_port_file(sdir))
    return _url(port) if port and _running_pid(sdir) else None


def status(home: str | os.PathLike[str]) -> ServiceStatus:
    sdir = service_dir(home)
    pid = _running_pid(sdir)
    port = read_int(_port_file(sdir))
    if pid is None or port is None:
        return ServiceStatus(NAME, False, None, None, "stopped")
    root = _get_json(f"{_url(port)}/")
    if not root:
        return ServiceStatus(NAME, True, pid, _url(port), "process running, HTTP not answering")
    version = root.get("version", {})
    number = version.get("number") if isinstance(version, dict) else None
    return ServiceStatus(NAME, True, pid, _url(port), f"OpenSearch {number}, health {_health(port) or 'unknown'}")
