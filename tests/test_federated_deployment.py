"""Federated runs as a deployment runs them: lost SuperNodes, a user's SuperLink, TLS, and no traffic off loopback.

All slow (each starts real Flower processes or Ray). The CLI runs in a subprocess so that a node
can be killed while it runs, as an operator or a crash would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests.test_federated import make_texts
from tests.tiny import make_tiny_model

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("feddeploy")
    model = make_tiny_model("encoder", root / "model")
    data = root / "data.csv"
    make_texts(180).to_csv(data, index=False)
    return {"root": root, "model": model, "data": data}


def _env(tmp_path: Path) -> dict[str, str]:
    from privacy.federated.runner import OFFLINE_ENV

    return dict(os.environ, **OFFLINE_ENV, FLWR_HOME=tempfile.mkdtemp(prefix="flwr-home-", dir=tmp_path),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(Path(__file__).parents[1]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_tree(pid: int) -> None:
    from privacy.federated.runner import _children

    for p in [*_children(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


class Federate:
    """``rai-audit federate`` in a subprocess; stderr read line by line, with a hook per line."""

    def __init__(self, argv: list[str], env: dict[str, str], on_line=None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "audit.cli", "federate", *argv], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.err: list[str] = []
        self.on_line = on_line
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)
            if self.on_line is not None:
                self.on_line(line, self)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(self.proc.pid)
            raise AssertionError("federate did not finish:\n" + "".join(self.err[-40:])) from None
        self.reader.join(timeout=10)
        return code


def _check_lost_node_record(out: Path, code: int, err: str) -> dict:
    assert code in (0, 1), err[-4000:]  # never 2: nothing here is a usage error
    rec = json.loads((out / "rai_audit_record.json").read_text(encoding="utf-8"))["federated"]
    rounds = rec["rounds"]
    assert [r["trained_clients"] for r in rounds] == [["0", "1", "2"], ["0", "1"], ["0", "1"]], rounds
    assert all(r["aggregated"] for r in rounds) and rec["rounds_aggregated"] == 3 and rec["model_round"] == 3
    clients = {c["client"]: c for c in rec["clients"]}
    assert clients["2"]["rounds_missed"] == [2, 3] and clients["2"]["lost_after_round"] == 1
    assert rec["lost_clients"] == {"2": 1}
    # The SuperLink's "Node Unavailable" replies are client 2's, not a phantom client "node 1".
    assert rounds[0]["missing_clients"] == [] and sorted(clients) == ["0", "1", "2"], rec["clients"]
    assert {f["client"] for f in rec["failures"]} == {"2"}, rec["failures"]
    assert rec["final"]["clients"] == ["0", "1"] and rec["final"]["over_all_clients"] is False
    assert any("Client 2 was lost after round 1" in w for w in rec["warnings"])
    assert (out / "model.safetensors").is_file()
    return rec


def _common(fed, out: Path) -> list[str]:
    return ["--model", str(fed["model"]), "--data", str(fed["data"]), "--num-clients", "3", "--num-rounds", "3",
            "--engine", "deployment", "--learning-rate", "3e-3", "--max-length", "16", "--round-timeout", "150",
            "--device", "cpu", "--out", str(out)]


def test_lost_supernode_with_the_started_superlink_rounds_finish_with_the_others(fed, tmp_path) -> None:
    killed: list[str] = []

    def on_line(line: str, run: Federate) -> None:
        if "round 1/3: 3/3 clients trained" in line and not killed:
            from privacy.federated.runner import _children

            for pid in _children(run.proc.pid):
                if "flower-supernode" in _cmdline(pid) and "partition-id=2" in _cmdline(pid):
                    _kill_tree(pid)
                    killed.append(_cmdline(pid))

    out = tmp_path / "out"
    run = Federate(_common(fed, out), _env(tmp_path), on_line)
    code = run.wait(timeout=1200)
    err = "".join(run.err)
    assert killed, err[-3000:]
    rec = _check_lost_node_record(out, code, err)
    assert rec["lost_processes"] and rec["lost_processes"][0]["process"] == "supernode-2"
    assert rec["logs"] and (Path(rec["logs"]) / "supernode-2.log").is_file()  # logs kept when a node was lost
    assert "supernode-2 stopped" in err
    shutil.rmtree(rec["logs"], ignore_errors=True)


def test_lost_supernode_with_the_users_superlink_rounds_finish_with_the_others(fed, tmp_path) -> None:
    env = _env(tmp_path)
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)])
        nodes = [start(f"supernode-{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                          f"127.0.0.1:{port}", "--host", "127.0.0.1", "--port", str(_free_port()),
                                          "--node-config", f"partition-id={i} num-partitions=3"]) for i in range(3)]
        killed: list[int] = []

        def on_line(line: str, run: Federate) -> None:
            if "round 1/3: 3/3 clients trained" in line and not killed:
                _kill_tree(nodes[2].pid)
                killed.append(nodes[2].pid)

        out = tmp_path / "out"
        argv = [a for a in _common(fed, out)]
        argv += ["--superlink", f"127.0.0.1:{port}", "--timeout", "1100"]
        run = Federate(argv, env, on_line)
        code = run.wait(timeout=1200)
        err = "".join(run.err)
        assert killed, err[-3000:]
        _check_lost_node_record(out, code, err)
    finally:
        for proc in procs:
            _kill_tree(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        for log in logs:
            log.close()


def _self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost that it signed (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("rai-audit test CA")).issuer_name(name("rai-audit test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_to_the_users_superlink_with_a_self_signed_certificate(fed, tmp_path) -> None:
    ca, cert, key = _self_signed(tmp_path)
    env = _env(tmp_path)
    port = _free_port()
    procs = []
    log = open(tmp_path / "tls.log", "wb")  # noqa: SIM115 - closed below
    try:
        procs.append(subprocess.Popen([str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
                                       "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                                       "--ssl-ca-certfile", str(ca)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        for i in range(2):
            procs.append(subprocess.Popen([str(BIN / "flower-supernode"), "--root-certificates", str(ca),
                                           "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                                           "--port", str(_free_port()),
                                           "--node-config", f"partition-id={i} num-partitions=2"],
                                          stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        out = tmp_path / "out"
        run = Federate(["--model", str(fed["model"]), "--data", str(fed["data"]), "--num-clients", "2",
                        "--num-rounds", "1", "--engine", "deployment", "--superlink", f"127.0.0.1:{port}",
                        "--root-certificates", str(ca), "--max-length", "16", "--device", "cpu",
                        "--timeout", "500", "--out", str(out)], env)
        code = run.wait(timeout=600)
        err = "".join(run.err)
        assert code == 0, err[-3000:] + (tmp_path / "tls.log").read_text(errors="replace")[-3000:]
        rec = json.loads((out / "rai_audit_record.json").read_text(encoding="utf-8"))["federated"]
        assert rec["complete"] is True and rec["superlink"] == f"127.0.0.1:{port}"
    finally:
        for proc in procs:
            _kill_tree(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        log.close()


_CONNECT = re.compile(r'connect\(\d+, \{sa_family=(AF_INET6?), sin6?_port=htons\((\d+)\).*?'
                      r'(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')


def test_simulation_connects_to_nothing_but_loopback_and_leaves_no_ray_folders(fed, tmp_path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    probe = subprocess.run([strace, "-f", "-e", "trace=connect", "-o", os.devnull, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode(errors='replace')[:200]}")
    trace = tmp_path / "connect.txt"
    script = ("import sys; from privacy.federated import FederatedFineTuner; "
              "FederatedFineTuner(num_clients=2, num_rounds=1, max_length=16, num_cpus=1, device='cpu')"
              f".fit({str(fed['model'])!r}, {str(fed['data'])!r})")
    env = _env(tmp_path)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        env.pop(key, None)  # the run must keep itself off the network without help from the caller
    before = set(Path(tempfile.gettempdir()).glob("rai-*"))
    proc = subprocess.run([strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace), sys.executable, "-c",
                           script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = trace.read_text(errors="replace")
    calls = [line for line in text.splitlines() if "connect(" in line]
    assert any("AF_INET" in c and "127.0.0.1" in c for c in calls)  # the tracer did see Ray's own traffic
    outside = []
    for line in calls:
        match = _CONNECT.search(line)
        if match is None:
            assert "AF_UNIX" in line or "AF_NETLINK" in line or "AF_UNSPEC" in line, line
            continue
        address = ipaddress.ip_address(match.group(3) or match.group(4))
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_loopback:
            outside.append(line)
    assert outside == [], outside[:10]
    leftover = set(Path(tempfile.gettempdir()).glob("rai-*")) - before
    assert not [p for p in leftover if p.name.startswith(("rai-ray-", "rai-federate-", "rai-flwr-home-"))], leftover
    strace_pids = {int(line.split()[0]) for line in calls if line.split()[0].isdigit()}
    ray_root = Path(tempfile.gettempdir()) / "ray"
    sessions = [p.name for p in ray_root.glob("session_*")] if ray_root.is_dir() else []
    assert not [s for s in sessions if s.rsplit("_", 1)[-1].isdigit() and int(s.rsplit("_", 1)[-1]) in strace_pids]
