"""Building the throwaway OpenSearch node: the server jar and its modules from Maven Central, and the tiny
Java class in ``opensearch_node/`` that starts them (see its ``pom.xml``), packaged once per version of the
sources in a cache directory; and finding a JDK to build and run it with.

Environment knobs:

- ``PERSONA_JAVA_HOME``: the JDK to build and run with (default: ``JAVA_HOME``, the ``java`` on PATH, ``/usr/lib/jvm/*``).
- ``PERSONA_SERVICES_CACHE``: where the built node lives (default ``~/.cache/persona/services``).
- ``PERSONA_MAVEN_REPO``: a Maven local repository to use instead of ``~/.m2/repository``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from persona_assets.services._process import apt_install, file_lock, is_root, run_logged, say

NAME = "opensearch"
OPENSEARCH_VERSION = "2.19.6"
NODE_SOURCES = Path(__file__).with_name("opensearch_node")
# OpenSearch 2.19 supports Java 11-21 officially; our Main is compiled for 17.
JAVA_MIN, JAVA_PREFERRED_MAX = 17, 21


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
