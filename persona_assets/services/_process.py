"""Process bookkeeping shared by the throwaway services: ports, pid files, locks, progress."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status(home)`` reports for one service."""

    name: str
    running: bool
    pid: int | None
    url: str | None
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def say(service: str, message: str) -> None:
    """Progress for people: always to stderr, never to stdout (stdout may carry the URLs)."""
    print(f"[persona services] {service}: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:port (a connection in TIME_WAIT doesn't count, as for servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_answers(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process, so that it doesn't linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live (not zombie) process; a child of this one that ended is reaped first."""
    if not pid or pid <= 0:
        return False
    _reap(pid)
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie is not: it was killed and awaits its parent's wait)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # The state letter follows the command name in parentheses, which may itself contain spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_matches(pid: int | None, *needles: str) -> bool:
    """True when ``pid`` is alive and its command line holds every needle (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    args = cmdline(pid)
    if not args:  # unreadable (no /proc): fall back to liveness alone
        return True
    joined = "\0".join(args)
    return all(needle in joined for needle in needles)


def terminate(pid: int, *, timeout: float, service: str) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    say(service, f"pid {pid} still running {timeout:.0f}s after SIGTERM: sending SIGKILL")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # A server we spawned leads a session of its own: its helper processes go with it.
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so that two ``up``/``down`` calls on one home don't race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def stop_service(
    sdir: Path,
    service: str,
    *,
    pid_file: Path,
    port_file: Path,
    running_pid: Callable[[Path], int | None],
    timeout: float,
) -> bool:
    """Stop a service started under ``sdir``: SIGTERM, wait ``timeout``, then SIGKILL; check its port closed.

    True when it was running. Holds the service's lock, so it never races a ``start``.
    """
    with file_lock(sdir / ".lock"):
        pid = running_pid(sdir)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            return False
        say(service, f"stopping pid {pid}")
        terminate(pid, timeout=timeout, service=service)
        pid_file.unlink(missing_ok=True)
        port = read_int(port_file)
        if port and not port_closes(port, timeout=_PORT_CLOSE_SECONDS):
            raise RuntimeError(
                f"{service}: port {port} still answers {_PORT_CLOSE_SECONDS:.0f}s after stopping pid {pid}"
            )
        return True


# A JVM's main thread can end (its /proc state then reads zombie) while its other threads still shut down and
# hold the listening socket, a moment longer after a SIGKILL of a 1 GiB heap on a busy machine: the port is
# given this long to close.
_PORT_CLOSE_SECONDS = 15.0


def port_closes(port: int, *, timeout: float) -> bool:
    """True once nothing accepts connections on 127.0.0.1:port, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while port_answers(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def spawn(
    args: Sequence[str], *, log_path: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-lived server detached from our session (Ctrl-C in the caller's terminal won't reach it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_logged(
    args: Sequence[str],
    *,
    service: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> None:
    """Run a setup command; raise with the command (and the log's tail) on failure.

    Its output goes to stderr, or to ``log_path`` when given (for chatty commands).
    """
    say(service, "$ " + " ".join(args) + (f"  (output: {log_path})" if log_path else ""))
    if log_path is None:
        completed = subprocess.run(
            list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, check=False
        )
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            completed = subprocess.run(
                list(args),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
    if completed.returncode != 0:
        detail = f"; last lines of {log_path}:\n{tail(log_path)}" if log_path else ""
        raise RuntimeError(f"{service}: command failed with exit code {completed.returncode}: {' '.join(args)}{detail}")


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(packages: Sequence[str], *, service: str) -> None:
    """``apt-get install -y PACKAGES`` (root only), running ``apt-get update`` first if the install fails."""
    if not is_root() or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{service}: {' '.join(packages)} missing; install it (apt-get install -y {' '.join(packages)}) and retry"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        run_logged(command, service=service, env=env)
    except RuntimeError:
        run_logged(["apt-get", "update"], service=service, env=env)
        run_logged(command, service=service, env=env)


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path
