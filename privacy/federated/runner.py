"""The two ways to run the federation: Flower's simulation engine and a real deployment.

**Simulation** (:func:`run_simulation_engine`): ``flwr.simulation.run_simulation`` runs the
``ServerApp`` in this process and one virtual SuperNode per client on Ray actors. One machine.

**Deployment** (:func:`run_deployment_engine`): the same ``ServerApp`` and ``ClientApp`` on
Flower's deployment runtime: a ``flower-superlink`` that coordinates, one ``flower-supernode``
per site, and ``flwr run`` to submit the run. With ``superlink=None`` a SuperLink and one
SuperNode per client are started on 127.0.0.1 (each taking its partition of the data) and stopped
afterwards; with ``superlink="host:port"`` the run goes to an existing federation whose
SuperNodes the sites started themselves. The Flower app project that ``flwr run`` needs is
generated into a temporary directory and points at the installed ``privacy.federated`` modules.

Both engines switch Flower's telemetry and update check, Flower's runtime dependency
installation and Ray's usage statistics off, use a temporary ``FLWR_HOME``, and stop every
process they start, by process id.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from audit.errors import AuditError, ConfigError
from privacy.federated.server_app import HISTORY, PROGRESS_PREFIX
from privacy.federated.task import Settings

__all__ = ["OFFLINE_ENV", "FederationError", "offline_environment", "run_deployment_engine",
           "run_simulation_engine"]

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
CONNECTION_NAME = "rai-audit"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class FederationError(AuditError):
    """The federation could not run to the end (engine failed to start, no round completed, ...)."""


@contextlib.contextmanager
def offline_environment(flwr_home: str | os.PathLike[str] | None = None) -> Iterator[dict[str, str]]:
    """Set the Flower/Ray offline variables (and ``FLWR_HOME``) for the duration; restore them after."""
    with contextlib.ExitStack() as stack:
        if flwr_home is None:
            flwr_home = stack.enter_context(tempfile.TemporaryDirectory(prefix="rai-flwr-home-"))
        wanted = dict(OFFLINE_ENV, FLWR_HOME=os.fspath(flwr_home))
        saved = {k: os.environ.get(k) for k in [*wanted, "PYTHONPATH"]}
        os.environ.update(wanted)
        try:
            yield dict(os.environ)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextlib.contextmanager
def _flower_logging(level: int) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def run_simulation_engine(settings: Settings, *, num_cpus: int | None = None, client_mods: Sequence[Any] = (),
                          verbose: bool = False) -> None:
    """Run the federation with Flower's simulation engine (Ray), one virtual SuperNode per client.

    Parameters
    ----------
    settings : Settings
        The run; outputs go to ``settings.output_dir``.
    num_cpus : int, optional
        CPUs Ray may use (default: one per client, at most the machine's); each client takes one.
    client_mods : sequence of Flower mods
        Wrapped around the ``ClientApp``'s handlers.
    verbose : bool, default=False
        Keep Flower's own INFO logging.
    """
    try:
        from flwr.simulation import run_simulation
    except ImportError:  # pragma: no cover - flwr[simulation] is a dependency
        raise ConfigError("The simulation engine needs Flower with Ray. Run: pip install 'flwr[simulation]>=1.20,<1.42'") from None
    from privacy.federated.client_app import build_client_app
    from privacy.federated.server_app import build_server_app

    cpus = num_cpus or max(1, min(settings.num_clients, os.cpu_count() or 1))
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                      "logging_level": "ERROR", "log_to_driver": verbose,
                      "object_store_memory": 256 * 1024 * 1024},
    }
    with offline_environment(), _flower_logging(logging.INFO if verbose else logging.ERROR), \
            _quiet_ray_warnings(), _reap_started_processes():
        run_simulation(server_app=build_server_app(settings),
                       client_app=build_client_app(settings, mods=client_mods),
                       num_supernodes=settings.num_clients, backend_config=backend_config)


@contextlib.contextmanager
def _quiet_ray_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def _reap_started_processes(poll_s: float = 0.5, grace_s: float = 10.0) -> Iterator[None]:
    """Stop every process started under this one while the block runs (Ray's GCS, raylet, workers).

    Ray shuts its processes down itself, but its actor workers, orphaned when the raylet exits, can
    linger for a minute on a busy machine. They are noted while the block runs (Linux /proc) and
    stopped by process id afterwards; a noted id is signalled only while it still names the same
    process (same start time).
    """
    before = set(_children(os.getpid()))
    seen: dict[int, str | None] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in _children(os.getpid()):
                if pid not in before and pid not in seen:
                    seen[pid] = _start_time(pid)
            stop.wait(poll_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5)
        mine = [pid for pid, started in seen.items() if started is not None and _start_time(pid) == started]
        for pid in mine:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) and _start_time(p) == seen[p] for p in mine):
            time.sleep(0.2)
        for pid in mine:
            if _alive(pid) and _start_time(pid) == seen[pid]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


# -- deployment ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _executable(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"The deployment engine needs the Flower command {name!r}, which is not installed beside "
                          f"{sys.executable}. Run: pip install 'flwr>=1.20,<1.42'")
    return found


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc; empty elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    parents: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the ppid follows the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class _Processes:
    """Processes this run started, each with its log file; stopped by process id, children included."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, start_new_session=True)
        self.started.append((name, proc, log_path))
        return proc

    def check_alive(self) -> None:
        for name, proc, log_path in self.started:
            if proc.poll() is not None:
                raise FederationError(f"The {name} process stopped early (exit code {proc.returncode}): "
                                      f"{_last_error(_tail(log_path))}. Check that its port is free and the model "
                                      "and data paths exist.")

    def stop(self, grace_s: float = 10.0) -> None:
        pids: list[int] = []
        for _, proc, _ in reversed(self.started):
            pids.extend(_children(proc.pid))
            pids.append(proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc, _ in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for _, proc, _ in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.started.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        with contextlib.suppress(OSError):
            return stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    return True


def _tail(path: Path, lines: int = 40) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [_ANSI.sub("", line) for line in text.splitlines()[-lines:]]


def _last_error(lines: Sequence[str]) -> str:
    boxed = [line.strip().strip("│").strip() for line in lines if line.lstrip().startswith("│")]
    if boxed:  # the Flower CLI prints its errors in a box
        return " ".join(b for b in boxed if b)[:300]
    for line in reversed(lines):
        if re.search(r"(Error|Exception)\b", line) and not line.lstrip().startswith("File "):
            return line.strip()[:300]
    return (lines[-1].strip()[:300] if lines else "no output")


def _wait_for_port(host: str, port: int, procs: _Processes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.5)
    raise FederationError(f"No SuperLink is listening on {host}:{port} after {timeout_s:.0f} s. Start it (flower-superlink "
                          "--insecure --port PORT), check the address, or raise startup_timeout on a slow machine.")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"SuperLink address {address!r} is not HOST:PORT. Give e.g. 127.0.0.1:9093.")
    return host.strip("[]"), int(port)


def write_app_project(directory: Path, settings: Settings) -> Path:
    """The Flower app project ``flwr run`` submits: a pyproject naming our installed components."""
    import tomli_w

    directory.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "rai-audit-federate", "version": "1.0.0", "license": "Apache-2.0",
                    "description": "rai-audit federated fine-tuning (generated; uses the installed rai-audit)",
                    "dependencies": []},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "rai-audit",
                                  "components": {"serverapp": "privacy.federated.server_app:app",
                                                 "clientapp": "privacy.federated.client_app:app"},
                                  "config": settings.to_run_config()}}},
    }
    (directory / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return directory


def _write_connection(flwr_home: Path, address: str, insecure: bool, root_certificates: str | None) -> None:
    import tomli_w

    connection: dict[str, Any] = {"address": address}
    if insecure:
        connection["insecure"] = True
    elif root_certificates:
        connection["root-certificates"] = os.fspath(Path(root_certificates).expanduser().resolve())
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION_NAME, CONNECTION_NAME: connection}}), encoding="utf-8")


def run_deployment_engine(settings: Settings, *, superlink: str | None = None, insecure: bool = True,
                          root_certificates: str | None = None, startup_timeout: float = 180.0,
                          timeout: float | None = None, progress: Callable[[str], None] | None = None,
                          on_started: Callable[[list[int]], None] | None = None) -> None:
    """Run the federation on Flower's deployment runtime (SuperLink, SuperNodes, ``flwr run``).

    Parameters
    ----------
    settings : Settings
        The run. The ``ServerApp`` runs where the SuperLink runs and writes ``settings.output_dir``
        there, so call this on the SuperLink's machine.
    superlink : str, optional
        ``host:port`` of a running SuperLink (its HTTP port, Flower's ``--port``) whose SuperNodes
        are already connected; ``settings.num_clients`` of them are waited for. ``None``: start a
        SuperLink and ``num_clients`` SuperNodes on 127.0.0.1 and stop them afterwards.
    insecure : bool, default=True
        Talk to the SuperLink without TLS (the loopback setup). Set False and give
        ``root_certificates`` for a SuperLink with TLS.
    root_certificates : str, optional
        PEM file of the CA that signed the SuperLink's certificate.
    startup_timeout : float, default=180
        Seconds to wait for the SuperLink (started here or given) to accept connections.
    timeout : float, optional
        Seconds for the whole run; ``None``: no limit beyond each round's timeout.
    progress : callable, optional
        Receives the ServerApp's per-round progress lines.
    on_started : callable, optional
        Receives the process ids started here (SuperLink first), once they are up.
    """
    flwr = _executable("flwr")
    with tempfile.TemporaryDirectory(prefix="rai-federate-") as tmp, offline_environment(Path(tmp) / "flwr-home"):
        root = Path(tmp)
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        logs = root / "logs"
        logs.mkdir()
        procs = _Processes(env, logs)
        try:
            if superlink is None:
                port = _free_port()
                procs.start("superlink", [_executable("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                          "--port", str(port)])
                _wait_for_port("127.0.0.1", port, procs, startup_timeout)
                for i in range(settings.num_clients):
                    procs.start(f"supernode-{i}", [
                        _executable("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                        "--host", "127.0.0.1", "--port", str(_free_port()),
                        "--node-config", f"partition-id={i} num-partitions={settings.num_clients}"])
                address = f"127.0.0.1:{port}"
                if on_started is not None:
                    on_started([p.pid for _, p, _ in procs.started])
            else:
                address = superlink
                _wait_for_port(*_split_address(superlink), procs, startup_timeout)
            _write_connection(root / "flwr-home", address, insecure, root_certificates)
            app_dir = write_app_project(root / "app", settings)
            lines = _stream_run(procs, [flwr, "run", str(app_dir), CONNECTION_NAME, "--stream"], env,
                                logs / "flwr-run.log", progress=progress, timeout=timeout)
        finally:
            procs.stop()
    if not (Path(settings.output_dir) / HISTORY).is_file():
        raise FederationError(f"The deployment run ended without a result; the ServerApp failed: {_last_error(lines)}.")


def _stream_run(procs: _Processes, argv: list[str], env: dict[str, str], log_path: Path, *,
                progress: Callable[[str], None] | None, timeout: float | None) -> list[str]:
    """Run ``flwr run --stream``, relaying progress lines, until it exits; fail fast if a node dies."""
    lines: collections.deque[str] = collections.deque(maxlen=400)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    procs.started.append(("flwr-run", proc, log_path))

    def pump() -> None:
        assert proc.stdout is not None
        with open(log_path, "w", encoding="utf-8") as log:
            for raw in proc.stdout:
                line = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip("\n")
                log.write(line + "\n")
                lines.append(line)
                if progress is not None and PROGRESS_PREFIX in line:
                    progress(line.split(PROGRESS_PREFIX, 1)[1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        for name, other, other_log in procs.started:
            if other is not proc and other.poll() is not None:
                raise FederationError(f"The {name} process stopped during the run (exit code {other.returncode}): "
                                      f"{_last_error(_tail(other_log))}.")
        if deadline is not None and time.monotonic() > deadline:
            raise FederationError(f"The deployment run did not finish within {timeout:.0f} s. Raise the timeout or "
                                  "check that every SuperNode is connected.")
        time.sleep(0.5)
    reader.join(timeout=10)
    text = list(lines)
    if proc.returncode != 0:
        raise FederationError(f"'flwr run' failed (exit code {proc.returncode}): {_last_error(text)}.")
    return text
