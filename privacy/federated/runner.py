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

__all__ = ["OFFLINE_ENV", "SIMULATION_ENV", "FederationError", "offline_environment", "run_deployment_engine",
           "run_simulation_engine", "sweep_stale_temp", "temp_prefix"]

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
# The simulation engine only. Ray (2.55) otherwise finds "its" address by a UDP connect to 8.8.8.8 and
# binds its services to the machine's public interface; on Linux this switch makes it use 127.0.0.1.
# Its usage-stats module asks the cloud metadata servers (169.254.169.254, metadata.google.internal)
# even with usage statistics off; routing plain HTTP through a closed loopback port makes those
# requests fail on this machine without a packet leaving it (loopback itself is exempt).
_BLACKHOLE = "http://127.0.0.1:9"
SIMULATION_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "http_proxy": _BLACKHOLE, "HTTP_PROXY": _BLACKHOLE, "https_proxy": _BLACKHOLE, "HTTPS_PROXY": _BLACKHOLE,
    "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1",
}
CONNECTION_NAME = "rai-audit"
LOOPBACK = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


_TEMP_NAME = re.compile(r"^(rai-ray|rai-federate|rai-flwr-home|rai-federate-run)-(\d+)-")


def temp_prefix(kind: str) -> str:
    """Prefix of a temporary directory of this process: ``kind-PID-``, so a later run can tell it is stale."""
    return f"{kind}-{os.getpid()}-"


def sweep_stale_temp(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the temporary directories earlier runs left when they were killed (their process is gone).

    Only directories named by :func:`temp_prefix`, owned by this user, whose process id no longer
    exists are removed; a directory of a live process is never touched. Returns those removed.
    """
    removed: list[Path] = []
    base = Path(root if root is not None else tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            match = _TEMP_NAME.match(entry.name)
            if not match or int(match.group(2)) == os.getpid() or _alive(int(match.group(2))):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed


class FederationError(AuditError):
    """The federation could not run to the end (engine failed to start, no round completed, ...)."""


@contextlib.contextmanager
def offline_environment(flwr_home: str | os.PathLike[str] | None = None,
                        extra: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Set the Flower/Ray offline variables (and ``FLWR_HOME``, and ``extra``) for the duration; restore them after."""
    with contextlib.ExitStack() as stack:
        if flwr_home is None:
            flwr_home = stack.enter_context(tempfile.TemporaryDirectory(prefix=temp_prefix("rai-flwr-home")))
        wanted = dict(OFFLINE_ENV, FLWR_HOME=os.fspath(flwr_home), **(extra or {}))
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
                          verbose: bool = False, progress: Callable[[str], None] | None = None) -> None:
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
    progress : callable, optional
        Unused here (the ServerApp runs in this process and prints its own progress lines); kept so
        both engines take the same arguments.

    Ray binds to 127.0.0.1 only (``_node_ip_address``; no dashboard, no usage statistics, no
    cloud or accelerator metadata probes) and keeps its session folder in a temporary directory
    of this run, removed afterwards, also when the run fails.
    """
    with offline_environment(extra=SIMULATION_ENV):  # Ray reads some of them when it is first imported
        try:
            from flwr.simulation import run_simulation
        except ImportError:  # pragma: no cover - flwr[simulation] is a dependency
            raise ConfigError("The simulation engine needs Flower with Ray. Run: pip install "
                              "'flwr[simulation]>=1.20,<1.42'") from None
        from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # as the variable above, for a Ray imported earlier in this process
    from privacy.federated.client_app import build_client_app
    from privacy.federated.server_app import build_server_app

    cpus = num_cpus or max(1, min(settings.num_clients, os.cpu_count() or 1))
    gpus = _gpus_for(settings.device)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("rai-ray")) as ray_tmp, offline_environment(extra=SIMULATION_ENV), \
            _flower_logging(logging.INFO if verbose else logging.ERROR), _quiet_ray_warnings(), \
            _reap_started_processes():
        backend_config: dict[str, Any] = {
            "client_resources": {"num_cpus": 1, "num_gpus": gpus / max(1, min(cpus, settings.num_clients)) if gpus else 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False,
                          "_node_ip_address": LOOPBACK, "_temp_dir": ray_tmp,
                          "logging_level": "ERROR", "log_to_driver": verbose,
                          "object_store_memory": 256 * 1024 * 1024},
        }
        try:
            run_simulation(server_app=build_server_app(settings),
                           client_app=build_client_app(settings, mods=client_mods),
                           num_supernodes=settings.num_clients, backend_config=backend_config)
        finally:
            _shutdown_ray()


def _gpus_for(device: str) -> int:
    """GPUs Ray may hand to the client actors: none unless the clients are to run on CUDA."""
    if not str(device).startswith(("cuda", "auto")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _shutdown_ray() -> None:
    with contextlib.suppress(Exception):  # Flower normally shuts Ray down itself; this covers a failed run
        import ray

        if ray.is_initialized():
            ray.shutdown()


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
                          on_started: Callable[[list[int]], None] | None = None,
                          quiet_interval: float | None = None) -> dict[str, Any]:
    """Run the federation on Flower's deployment runtime (SuperLink, SuperNodes, ``flwr run``).

    Parameters
    ----------
    settings : Settings
        The run. The ``ServerApp`` runs where the SuperLink runs and writes ``settings.output_dir``
        there, so call this on the SuperLink's machine.
    superlink : str, optional
        ``host:port`` of a running SuperLink (its HTTP port, Flower's ``--port``) whose SuperNodes
        are already connected. ``None``: start a SuperLink and ``num_clients`` SuperNodes on
        127.0.0.1 and stop them afterwards.
    insecure : bool, default=True
        Talk to the SuperLink without TLS (the loopback setup). Set False and give
        ``root_certificates`` for a SuperLink with TLS.
    root_certificates : str, optional
        PEM file of the CA that signed the SuperLink's certificate.
    startup_timeout : float, default=180
        Seconds to wait for the SuperLink (started here or given) to accept connections.
    timeout : float, optional
        Seconds for the whole run; ``None``: no limit beyond each round's timeout. When it expires
        ``flwr run`` is stopped; the ServerApp's last checkpoint stays in ``settings.output_dir``.
    progress : callable, optional
        Receives the ServerApp's per-round progress lines, and a line of this function's own when
        nothing was heard for ``quiet_interval`` seconds.
    on_started : callable, optional
        Receives the process ids started here (SuperLink first), once they are up.
    quiet_interval : float, optional
        Default: ``settings.progress_interval``.

    Returns
    -------
    dict
        ``lost_processes`` (SuperNodes started here that stopped during the run: name, exit code,
        seconds into the run) and ``logs`` (a kept copy of every process's log, or ``None``).
        A SuperNode that stops is not fatal: the ServerApp goes on with the others.

    Raises
    ------
    FederationError
        The SuperLink or ``flwr run`` failed, or the run timed out; its ``info`` holds the same
        dict, and the logs are kept (the message says where).
    """
    flwr = _executable("flwr")
    root = Path(tempfile.mkdtemp(prefix=temp_prefix("rai-federate-run")))
    info: dict[str, Any] = {"lost_processes": [], "logs": None}
    failed = True
    try:
        with offline_environment(root / "flwr-home"):
            env = dict(os.environ)
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
            logs = root / "logs"
            logs.mkdir()
            procs = _Processes(env, logs)
            try:
                if superlink is None:
                    port = _free_port()
                    procs.start("superlink", [_executable("flower-superlink"), "--insecure", "--host", LOOPBACK,
                                              "--port", str(port)])
                    _wait_for_port(LOOPBACK, port, procs, startup_timeout)
                    for i in range(settings.num_clients):
                        procs.start(f"supernode-{i}", [
                            _executable("flower-supernode"), "--insecure", "--superlink", f"{LOOPBACK}:{port}",
                            "--host", LOOPBACK, "--port", str(_free_port()),
                            "--node-config", f"partition-id={i} num-partitions={settings.num_clients}"])
                    address = f"{LOOPBACK}:{port}"
                    if on_started is not None:
                        on_started([p.pid for _, p, _ in procs.started])
                else:
                    address = superlink
                    _wait_for_port(*_split_address(superlink), procs, startup_timeout)
                _write_connection(root / "flwr-home", address, insecure, root_certificates)
                app_dir = write_app_project(root / "app", settings)
                _stream_run(procs, [flwr, "run", str(app_dir), CONNECTION_NAME, "--stream"], env,
                            logs / "flwr-run.log", progress=progress, timeout=timeout, info=info,
                            quiet_interval=quiet_interval or settings.progress_interval)
            finally:
                procs.stop()
        failed = False
    except FederationError as exc:
        info["logs"] = _keep_logs(root)
        exc.info = info  # type: ignore[attr-defined]
        exc.args = (f"{exc.args[0]} Logs: {info['logs']}.",) if info["logs"] else exc.args
        raise
    finally:
        if not failed and info["lost_processes"]:
            info["logs"] = _keep_logs(root)
        shutil.rmtree(root, ignore_errors=True)
    if not (Path(settings.output_dir) / HISTORY).is_file():
        raise FederationError("The deployment run ended without a result; the ServerApp wrote no history. "
                              "Check the SuperLink's log.")
    return info


def _keep_logs(root: Path) -> str | None:
    """Copy the run's logs out of its temporary folder (which is removed) into a folder that stays."""
    source = root / "logs"
    if not source.is_dir():
        return None
    kept = Path(tempfile.mkdtemp(prefix="rai-federate-logs-"))
    for log in source.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copy2(log, kept / log.name)
    return str(kept)


def _stream_run(procs: _Processes, argv: list[str], env: dict[str, str], log_path: Path, *,
                progress: Callable[[str], None] | None, timeout: float | None, info: dict[str, Any],
                quiet_interval: float = 30.0) -> list[str]:
    """Run ``flwr run --stream``, relaying progress lines, until it exits.

    A SuperNode that stops is noted in ``info["lost_processes"]`` and the run goes on; the
    SuperLink stopping, ``flwr run`` failing, or the overall timeout raise :class:`FederationError`.
    """
    lines: collections.deque[str] = collections.deque(maxlen=400)
    heard = [time.monotonic()]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    procs.started.append(("flwr-run", proc, log_path))

    def pump() -> None:
        assert proc.stdout is not None
        with open(log_path, "w", encoding="utf-8") as log:
            for raw in proc.stdout:
                line = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip("\n")
                log.write(line + "\n")
                log.flush()
                lines.append(line)
                if progress is not None and PROGRESS_PREFIX in line:
                    heard[0] = time.monotonic()
                    progress(line.split(PROGRESS_PREFIX, 1)[1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    begun = time.monotonic()
    deadline = None if timeout is None else begun + timeout
    noted: set[str] = set()
    while proc.poll() is None:
        for name, other, other_log in procs.started:
            if other is proc or other.poll() is None or name in noted:
                continue
            noted.add(name)
            if name == "superlink":
                raise FederationError(f"The SuperLink stopped during the run (exit code {other.returncode}): "
                                      f"{_last_error(_tail(other_log))}.")
            info["lost_processes"].append({"process": name, "exit_code": other.returncode,
                                           "after_s": round(time.monotonic() - begun, 1)})
            if progress is not None:
                progress(f"{name} stopped (exit code {other.returncode}); the run goes on with the other clients")
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise FederationError(f"The deployment run did not finish within {timeout:.0f} s (the overall timeout); "
                                  "it was stopped and the rounds finished before are kept. Raise --timeout or "
                                  "check that the SuperNodes are connected.")
        if progress is not None and now - heard[0] >= quiet_interval:
            progress(f"deployment: no progress line for {now - heard[0]:.0f} s ({now - begun:.0f} s into the run"
                     f"{'' if deadline is None else f', stopping at {timeout:.0f} s'})")
            heard[0] = now
        time.sleep(0.5)
    reader.join(timeout=10)
    text = list(lines)
    if proc.returncode != 0:
        raise FederationError(f"'flwr run' failed (exit code {proc.returncode}): {_last_error(text)}.")
    return text
