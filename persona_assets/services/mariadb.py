"""A throwaway MariaDB server (Debian's ``mariadb-server``) on loopback, separate from any system one.

The first start installs the package when it is missing (``apt-get install``, as root), creates a
data directory with ``mariadb-install-db`` and then runs ``mariadbd --no-defaults`` with everything
on the command line, so ``/etc/mysql`` and a system server (if the package's postinst started one)
play no part. Each start makes sure of the database ``persona`` and the user ``persona`` (with
a password kept in ``HOME/services/mariadb/password``), which may use ``persona`` and any database
named ``persona_*``. root has no password and is reachable only through the server's Unix socket.

Layout under ``HOME/services/mariadb/``: ``data/``, ``run/`` (socket and mariadbd's own pid
file), ``logs/mariadb.err`` (the server's error log), ``logs/mariadbd.out`` and
``logs/install-db.log``, ``tmp/``, ``mariadb.pid``, ``mariadb.port`` and ``password``.

Environment knobs: ``PERSONA_MARIADB_START_TIMEOUT`` (seconds, default 120),
``PERSONA_MARIADB_OPTS`` (extra ``mariadbd`` options, split on whitespace).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

import pymysql

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

NAME = "mariadb"
DATABASE = "persona"
USER = "persona"
PACKAGE = "mariadb-server"
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
)
# sun_path holds 108 bytes; longer socket paths go under /tmp instead.
_MAX_SOCKET_PATH = 100


# --- layout -------------------------------------------------------------------------------------


def service_dir(home: str | os.PathLike[str]) -> Path:
    return Path(home).expanduser().resolve() / "services" / NAME


def _data_dir(sdir: Path) -> Path:
    return sdir / "data"


def _pid_file(sdir: Path) -> Path:
    return sdir / "mariadb.pid"


def _port_file(sdir: Path) -> Path:
    return sdir / "mariadb.port"


def _password_file(sdir: Path) -> Path:
    return sdir / "password"


def _initialized_marker(sdir: Path) -> Path:
    return sdir / "initialized"


def log_path(home: str | os.PathLike[str]) -> Path:
    return service_dir(home) / "logs" / "mariadb.err"


def socket_path(home: str | os.PathLike[str]) -> Path:
    sdir = service_dir(home)
    preferred = sdir / "run" / "mariadb.sock"
    if len(str(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    return Path("/tmp") / f"persona-mariadb-{hashlib.sha256(str(sdir).encode()).hexdigest()[:12]}.sock"


def _url(password: str, port: int) -> str:
    return f"mysql+pymysql://{USER}:{password}@127.0.0.1:{port}/{DATABASE}?charset=utf8mb4"


# --- binaries -------------------------------------------------------------------------------------


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name, path=_SEARCH_PATH)
        if found:
            return found
    return None


def ensure_installed() -> tuple[str, str]:
    """Paths of ``mariadbd`` and ``mariadb-install-db``, installing ``mariadb-server`` when missing."""
    server = _which("mariadbd", "mysqld")
    install_db = _which("mariadb-install-db", "mysql_install_db")
    if server and install_db:
        return server, install_db
    if not is_root():
        raise RuntimeError(f"{NAME}: mariadbd not found; install it with `sudo apt-get install -y {PACKAGE}` and retry")
    say(
        NAME,
        f"{PACKAGE} is not installed: installing it with apt-get (a system service it may start is not ours and is left alone)",
    )
    started = time.monotonic()
    apt_install([PACKAGE], service=NAME)
    say(NAME, f"{PACKAGE} installed in {time.monotonic() - started:.1f}s")
    server = _which("mariadbd", "mysqld")
    install_db = _which("mariadb-install-db", "mysql_install_db")
    if not (server and install_db):
        raise RuntimeError(f"{NAME}: {PACKAGE} installed but mariadbd / mariadb-install-db are not on {_SEARCH_PATH}")
    return server, install_db


# --- setup ----------------------------------------------------------------------------------------


def _password(sdir: Path) -> str:
    path = _password_file(sdir)
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    password = secrets.token_urlsafe(18)  # URL-safe: goes into the SQLAlchemy URL as is
    write_text_atomic(path, password + "\n", mode=0o600)
    return password


def _initialize(sdir: Path, install_db: str) -> None:
    if _initialized_marker(sdir).exists():
        return
    data = _data_dir(sdir)
    shutil.rmtree(data, ignore_errors=True)  # a half-made data directory from an interrupted run
    data.mkdir(parents=True)
    command = [
        install_db,
        "--no-defaults",
        f"--datadir={data}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--skip-name-resolve",
    ]
    if is_root():
        command.append("--user=root")
    say(NAME, f"creating the data directory {data}")
    run_logged(command, service=NAME, log_path=sdir / "logs" / "install-db.log")
    write_text_atomic(_initialized_marker(sdir), time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


def _server_command(server: str, sdir: Path, sock: Path, port: int) -> list[str]:
    command = [
        server,
        "--no-defaults",
        f"--datadir={_data_dir(sdir)}",
        f"--socket={sock}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--pid-file={sdir / 'run' / 'mariadbd.pid'}",
        f"--log-error={sdir / 'logs' / 'mariadb.err'}",
        f"--tmpdir={sdir / 'tmp'}",
        "--skip-name-resolve",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
        "--innodb-buffer-pool-size=256M",
        "--max-connections=200",
        *os.environ.get("PERSONA_MARIADB_OPTS", "").split(),
    ]
    if is_root():
        command.append("--user=root")
    return command


def _root_connection(sock: Path) -> pymysql.connections.Connection:
    return pymysql.connect(unix_socket=str(sock), user="root", password="", connect_timeout=2, autocommit=True)


def _provision(sock: Path, password: str) -> None:
    """The database and the user; safe to run on every start (it also re-applies the password)."""
    connection = _root_connection(sock)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
            for host in ("127.0.0.1", "localhost"):
                cursor.execute(f"CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY %s", (password,))
                cursor.execute(f"ALTER USER '{USER}'@'{host}' IDENTIFIED BY %s", (password,))
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'{host}'")
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}\\_%`.* TO '{USER}'@'{host}'")
            # root stays reachable through the socket only (install-db also makes root@<hostname>).
            cursor.execute("SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'")
            for (host,) in cursor.fetchall():
                cursor.execute("DROP USER %s@%s", ("root", host))
    finally:
        connection.close()


def _user_can_connect(password: str, port: int) -> bool:
    try:
        connection = pymysql.connect(
            host="127.0.0.1", port=port, user=USER, password=password, database=DATABASE, connect_timeout=2
        )
    except pymysql.err.MySQLError:
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    finally:
        connection.close()


def _wait_accepting(pid: int, sock: Path, sdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise RuntimeError(
                f"{NAME}: mariadbd (pid {pid}) exited while starting; last lines of its error log:\n{tail(sdir / 'logs' / 'mariadb.err')}"
            )
        if sock.exists():
            try:
                _root_connection(sock).close()
                return
            except pymysql.err.MySQLError as error:
                last = error
        time.sleep(0.25)
    raise TimeoutError(
        f"{NAME}: not accepting connections within {timeout:.0f}s ({last}); error log:\n{tail(sdir / 'logs' / 'mariadb.err')}"
    )


# --- lifecycle ------------------------------------------------------------------------------------


def _running_pid(sdir: Path) -> int | None:
    pid = read_int(_pid_file(sdir))
    return pid if pid_matches(pid, "--datadir=" + str(_data_dir(sdir))) else None


def start(home: str | os.PathLike[str], *, timeout: float | None = None) -> str:
    """Start the server (or find it running) and return a SQLAlchemy URL for the ``persona`` database."""
    sdir = service_dir(home)
    timeout = float(os.environ.get("PERSONA_MARIADB_START_TIMEOUT", "120")) if timeout is None else timeout
    with file_lock(sdir / ".lock"):
        password = _password(sdir)
        pid = _running_pid(sdir)
        port = read_int(_port_file(sdir))
        sock = socket_path(home)
        if pid and port:
            try:
                _wait_accepting(pid, sock, sdir, timeout)
                _provision(sock, password)
                if _user_can_connect(password, port):
                    say(NAME, f"already running (pid {pid}) on 127.0.0.1:{port}")
                    return _url(password, port)
            except (RuntimeError, TimeoutError, pymysql.err.MySQLError) as error:
                say(NAME, f"pid {pid} is running but unusable ({error}); restarting it")
            terminate(pid, timeout=60, service=NAME)

        server, install_db = ensure_installed()
        for directory in ("run", "logs", "tmp"):
            (sdir / directory).mkdir(parents=True, exist_ok=True)
        _initialize(sdir, install_db)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # a stale socket from a killed server
        last_error: Exception | None = None
        for _attempt in range(2):  # a second try covers losing a race for the chosen free port
            port = port if port and port_is_free(port) else free_port()
            started = time.monotonic()
            say(NAME, f"starting mariadbd on 127.0.0.1:{port}; error log: {sdir / 'logs' / 'mariadb.err'}")
            process = spawn(
                _server_command(server, sdir, sock, port), log_path=sdir / "logs" / "mariadbd.out", cwd=sdir
            )
            write_text_atomic(_pid_file(sdir), f"{process.pid}\n")
            write_text_atomic(_port_file(sdir), f"{port}\n")
            try:
                _wait_accepting(process.pid, sock, sdir, timeout)
            except RuntimeError as error:
                last_error = error
                port = None
                continue
            except TimeoutError:
                terminate(process.pid, timeout=60, service=NAME)
                raise
            _provision(sock, password)
            if not _user_can_connect(password, port):
                terminate(process.pid, timeout=60, service=NAME)
                raise RuntimeError(f"{NAME}: user {USER} cannot connect over TCP to 127.0.0.1:{port}")
            say(NAME, f"ready on 127.0.0.1:{port} after {time.monotonic() - started:.1f}s (pid {process.pid})")
            return _url(password, port)
        assert last_error is not None
        raise last_error


def stop(home: str | os.PathLike[str], *, timeout: float = 60.0) -> bool:
    """Clean shutdown (SIGTERM makes mariadbd shut down InnoDB properly), then SIGKILL. True if it was running."""
    sdir = service_dir(home)
    return stop_service(
        sdir, NAME, pid_file=_pid_file(sdir), port_file=_port_file(sdir), running_pid=_running_pid, timeout=timeout
    )


def url(home: str | os.PathLike[str]) -> str | None:
    """The URL of the running server, or None when it isn't running (never starts anything)."""
    sdir = service_dir(home)
    port = read_int(_port_file(sdir))
    if not port or _running_pid(sdir) is None or not _password_file(sdir).exists():
        return None
    return _url(_password_file(sdir).read_text().strip(), port)


def status(home: str | os.PathLike[str]) -> ServiceStatus:
    sdir = service_dir(home)
    pid = _running_pid(sdir)
    port = read_int(_port_file(sdir))
    if pid is None or port is None:
        return ServiceStatus(NAME, False, None, None, "stopped")
    shown = f"mysql+pymysql://{USER}:***@127.0.0.1:{port}/{DATABASE}?charset=utf8mb4"
    try:
        connection = _root_connection(socket_path(home))
    except pymysql.err.MySQLError as error:
        return ServiceStatus(NAME, True, pid, shown, f"process running, not accepting connections ({error})")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
    finally:
        connection.close()
    return ServiceStatus(NAME, True, pid, shown, f"MariaDB {row[0] if row else 'unknown'}")
