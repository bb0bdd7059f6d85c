"""Finding, starting and sharing `stoker serve` processes.

`serve()` starts a private server and returns a handle (a context manager).
`local_server()` finds or starts the node's shared server exactly as the JVM
does (dev.stoker.server.LocalServer): one server per node and user, found
through a run directory guarded by a POSIX file lock, listening on loopback
with a random token. Python UDF workers on an executor therefore share the
server that the executor JVM uses.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from stoker._native import Client as _NativeClient
from stoker._native import ServerUnavailableError, StokerError

if TYPE_CHECKING:  # typing.Self is Python 3.11+; annotations are not evaluated
    from typing import Self

    from stoker.client import Client

STARTUP_SECONDS = 120


def find_binary() -> str:
    """The `stoker` server binary: `STOKER_BIN`, the one installed with this
    package, `stoker` on the PATH, or a development build next to the sources."""
    candidates = [os.environ.get("STOKER_BIN")]
    here = Path(__file__).resolve().parent
    candidates.append(str(here / "bin" / "stoker"))
    candidates.append(shutil.which("stoker"))
    candidates.append(str(here.parent.parent / "target" / "release" / "stoker"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            # Absolute: Spark executors and Python workers run in other directories.
            return os.path.abspath(c)
    raise ServerUnavailableError(
        "no stoker server binary: set STOKER_BIN, put `stoker` on the PATH, or build it "
        "with `make native`"
    )


def _first_line(process: subprocess.Popen, seconds: float) -> str | None:
    """The server's first stdout line (its address), or None if it says nothing in time."""
    out: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        out.append(process.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    line = out[0].strip() if out else ""
    return line if line.startswith("grpc") else None


class Server:
    """A running `stoker serve` process started by this Python process.

    Use it as a context manager, or call `stop()`; `client()` connects to it.
    """

    def __init__(self, process: subprocess.Popen, address: str, token: str | None, log: Path):
        self.process = process
        self.address = address
        self.token = token
        self.log = log

    def client(self) -> Client:
        """A stoker.Client connected to this server."""
        from stoker.client import Client

        return Client(self.address, token=self.token)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait for the server to drain; returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"stoker.Server({self.address!r}, pid={self.process.pid})"


def serve(
    *,
    device: str = "auto",
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    cache_mb: int | None = None,
    model_dir: str | os.PathLike | None = None,
    args: list[str] | tuple[str, ...] = (),
    binary: str | None = None,
    log: str | os.PathLike | None = None,
    detach: bool = False,
) -> Server:
    """Starts `stoker serve` and returns a handle once it listens.

    With `token`, clients must present it (written to a private file the server
    reads). `args` passes any other `stoker serve` option (docs/cli.md). The server
    stops with this process, however it ends (`--exit-with-parent`), unless `detach`
    asks it to outlive it.
    """
    binary = binary or find_binary()
    command = [binary, "serve", "--host", host, "--port", str(port), "--device", device]
    if not detach:
        command.append("--exit-with-parent")
    run_dir = (
        Path(os.environ.get("TMPDIR", "/tmp")) / f"stoker-py-{os.getpid()}-{secrets.token_hex(4)}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if token is not None:
        token_file = run_dir / "token"
        _write_token(token_file, token)
        command += ["--token-file", str(token_file)]
    if cache_mb is not None:
        command += ["--cache-mb", str(cache_mb)]
    if model_dir is not None:
        command += ["--model-dir", str(model_dir)]
    command += list(args)
    return _launch(command, Path(log) if log else run_dir / "server.log", token)


def _write_token(path: Path, token: str) -> None:
    """Writes the token to a new file only its owner can read."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


def _launch(command: list[str], log: Path, token: str | None) -> Server:
    """Starts the server `command` describes, stderr to `log`; returns once it has
    printed its address, or raises ServerUnavailableError (and leaves no process)."""
    with open(log, "ab") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
    address = _first_line(process, STARTUP_SECONDS)
    if address is None:
        process.kill()
        process.wait()
        raise ServerUnavailableError(
            f"the stoker server ({command[0]}) did not start within {STARTUP_SECONDS} s; see {log}"
        )
    return Server(process, address, token, log)


# --- the node's shared server (same protocol as LocalServer.java) ----------


def run_dir() -> Path:
    configured = os.environ.get("STOKER_RUN_DIR")
    if configured:
        return Path(configured)
    user = "".join(c if c.isalnum() or c in "_.-" else "_" for c in _user())
    base = Path("/tmp") if os.path.isdir("/tmp") else Path(os.environ.get("TMPDIR", "."))
    return base / f"stoker-{user}"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "user")


def _read_properties(path: Path) -> dict[str, str]:
    """A java.util.Properties file as LocalServer writes it (`key=value`, `\\:` escapes)."""
    props: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = (
            value.strip().replace("\\:", ":").replace("\\=", "=").replace("\\\\", "\\")
        )
    return props


def _write_properties(path: Path, props: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    lines = ["#stoker local server"]
    for k, v in props.items():
        lines.append(f"{k}={v.replace(chr(92), chr(92) * 2).replace(':', chr(92) + ':')}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _alive(address: str, token: str | None) -> bool:
    try:
        health, _ = _NativeClient(address, token).action("health", "{}")
        return '"serving"' in health
    except StokerError:
        return False


def _stop_silent(pid: str) -> None:
    """Kills the recorded server if it still runs although it did not answer (as the
    JVM's LocalServer.stopSilent does): a replacement is about to start. Only a
    process whose command is the stoker binary, so a reused pid is left alone."""
    try:
        exe = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")[0]
        if exe.endswith(b"stoker"):
            os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError):
        pass


_local: tuple[str, str | None] | None = None
_started: Server | None = None
_lock = threading.Lock()


def _register(directory: Path) -> None:
    """Registers this process as a user of the node's server, and forgets it at exit."""
    users = directory / "users"
    users.mkdir(exist_ok=True)
    mine = users / str(os.getpid())
    if not mine.exists():
        mine.write_text("python\n")
        atexit.register(mine.unlink, missing_ok=True)


def local_server() -> tuple[str, str | None]:
    """The node's shared server (address, token), started if none is alive.

    This process registers as one of its users (the run directory's `users/`,
    shared with the JVM's LocalServer); the server stops once no user is alive,
    however they ended (PySpark's forked workers end by os._exit).
    """
    global _local, _started
    with _lock:
        if _local is not None and _alive(*_local):
            return _local
        # Asked once: a server that did not answer just now is not asked again below.
        silent = _local
        directory = run_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "server.lock", "a") as lock_file:
            # POSIX record lock, the kind java.nio FileChannel.lock takes on Linux.
            fcntl.lockf(lock_file, fcntl.LOCK_EX)
            try:
                info = directory / "server.properties"
                if info.exists():
                    props = _read_properties(info)
                    token_file = props.get("token_file")
                    if props.get("uri") and token_file and os.path.exists(token_file):
                        found = (props["uri"], Path(token_file).read_text().strip())
                        if found != silent and _alive(*found):
                            _register(directory)
                            _local = found
                            return found
                    _stop_silent(props.get("pid", ""))
                token = secrets.token_hex(32)
                token_file = directory / "token"
                _write_token(token_file, token)
                extra = os.environ.get("STOKER_SERVER_ARGS", "").split()
                # Registered before the server starts, so it never finds no user.
                _register(directory)
                command = [
                    find_binary(),
                    "serve",
                    "--users",
                    str(directory / "users"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--token-file",
                    str(token_file),
                    "--device",
                    os.environ.get("STOKER_DEVICE", "auto"),
                    *extra,
                ]
                _started = _launch(command, directory / "server.log", token)
                _write_properties(
                    info,
                    {
                        "uri": _started.address,
                        "token_file": str(token_file),
                        "pid": str(_started.process.pid),
                    },
                )
                _local = (_started.address, token)
                return _local
            finally:
                fcntl.lockf(lock_file, fcntl.LOCK_UN)
