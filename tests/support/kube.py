"""A real Kubernetes API server for tests (DESIGN.md §7): etcd and kube-apiserver, built from the Go
module proxy by scripts/testenv-build, started once per pytest session on loopback.

Opt in from a test module, then take the `kube` fixture:

    pytest_plugins = ("tests.support.kube",)

    def test_x(kube: Kube) -> None:
        kube.kubectl("apply", "-f", "crds/")
        viewer = kube.user_kubeconfig("viewer", groups=("readers",))
        denied = kube.kubectl("delete", "configmap", "x", kubeconfig=viewer, check=False)

The binaries are built before the first test runs (in collection, outside the per-test timeout) when
the cache lacks them; a failed build fails every test that uses `kube`, with the build log's tail.
Logs and kubeconfigs stay in pytest's temp dir; a failed test that used `kube` shows the tails of the
etcd and kube-apiserver logs.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = ROOT / "scripts" / "testenv-versions"
BUILD_SCRIPT = ROOT / "scripts" / "testenv-build"
START_TIMEOUT = 90.0
COMMAND_TIMEOUT = 120.0
LOG_TAIL = 6000


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The NAME=value lines of scripts/testenv-versions (the one place versions are pinned)."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            versions[name.strip()] = value.strip()
    return versions


def cache_root() -> Path:
    """Where scripts/testenv-build puts `<component>-<version>/<component>`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callwarden" / "testenv"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    helm: Path

    @classmethod
    def expected(cls) -> Binaries:
        versions = read_versions()
        root = cache_root()
        k8s = versions["KUBERNETES_VERSION"]
        return cls(
            etcd=root / f"etcd-{versions['ETCD_VERSION']}" / "etcd",
            kube_apiserver=root / f"kube-apiserver-{k8s}" / "kube-apiserver",
            kubectl=root / f"kubectl-{k8s}" / "kubectl",
            helm=root / f"helm-{versions['HELM_VERSION']}" / "helm",
        )

    def missing(self) -> list[Path]:
        return [
            p for p in (self.etcd, self.kube_apiserver, self.kubectl, self.helm) if not os.access(p, os.X_OK)
        ]


def tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return text if len(text) <= limit else "...\n" + text[-limit:]


# ---------------------------------------------------------------------------------------------------
# Certificates: one CA signs the serving cert and every client cert; the API server trusts it.


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 keys are generated in microseconds; RSA would cost a noticeable share of session start.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> CertificateAuthority:
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callwarden-testenv-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        server_names: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM): a serving cert when `server_names` is given, else a client cert.

        For a client cert the API server reads the user name from CN and the groups from O.
        """
        key = _new_key()
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    sans.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


# ---------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ManagedProcess:
    """A child process whose output goes to a log file; stop() ends it (TERM, then KILL)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def wait_until_ready(
    process: ManagedProcess, url: str, context: ssl.SSLContext | None, timeout: float = START_TIMEOUT
) -> None:
    """Polls `url` until it answers 200; fails at once if the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = process.exited()
        if code is not None:
            raise RuntimeError(f"{process.name} exited with status {code}\n{tail(process.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}: {error.read()[-500:].decode(errors='replace')}"
        except OSError as error:
            last = str(error)
        time.sleep(0.2)
    raise RuntimeError(
        f"{process.name} not ready at {url} after {timeout:.0f}s ({last})\n{tail(process.log_path)}"
    )


# ---------------------------------------------------------------------------------------------------
# The environment


class Kube:
    """etcd + kube-apiserver on loopback, an admin kubeconfig, kubectl and helm.

    Attributes: `server` (https URL), `kubeconfig` (admin, O=system:masters), `kubectl_path`, `helm`
    (path of the helm binary), `versions` (scripts/testenv-versions), `workdir` (logs, certs, kubeconfigs).
    """

    SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

    def __init__(self, binaries: Binaries, workdir: Path) -> None:
        self.versions = read_versions()
        self.binaries = binaries
        self.workdir = workdir
        self.kubectl_path = binaries.kubectl
        self.helm = binaries.helm
        self.ca = CertificateAuthority.create()
        self.ca_path = self._write("ca.crt", _cert_pem(self.ca.cert))
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.etcd = ManagedProcess("etcd", self._etcd_argv(), workdir / "etcd.log")
        self.apiserver = ManagedProcess(
            "kube-apiserver", self._apiserver_argv(), workdir / "kube-apiserver.log"
        )
        self.kubeconfig = self.user_kubeconfig(
            "admin", groups=("system:masters",), filename="admin.kubeconfig"
        )
        cert, key = (self.workdir / "admin.crt", self.workdir / "admin.key")
        self._admin_context = ssl.create_default_context(cafile=str(self.ca_path))
        self._admin_context.load_cert_chain(cert, key)

    def _write(self, name: str, data: bytes, mode: int = 0o600) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def _etcd_argv(self) -> list[str]:
        peer_port = free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        return [
            str(self.binaries.etcd),
            "--name=testenv",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=testenv={peer}",
            # Throwaway data: skipping fsync keeps etcd from dominating the suite's run time.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        serving_cert, serving_key = self.ca.issue(
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        sa_key = _new_key()
        sa_public = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return [
            str(self.binaries.kube_apiserver),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={self._write('apiserver.crt', serving_cert)}",
            f"--tls-private-key-file={self._write('apiserver.key', serving_key)}",
            f"--client-ca-file={self.ca_path}",
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self._write('sa.pub', sa_public)}",
            f"--service-account-signing-key-file={self._write('sa.key', _key_pem(sa_key))}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # No controller-manager runs: the ServiceAccount plugin would reject every pod for want of
            # the `default` ServiceAccount it creates. Nothing else enabled by default needs nodes.
            "--disable-admission-plugins=ServiceAccount",
            # The `kubernetes` Service's endpoints would point at loopback, which nothing here reads.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
        ]

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.etcd.start()
        wait_until_ready(self.etcd, f"http://127.0.0.1:{self.etcd_port}/health", None)
        self._start_apiserver()

    def _start_apiserver(self) -> None:
        self.apiserver.start()
        wait_until_ready(self.apiserver, f"{self.server}/readyz", self._admin_context)

    def restart_apiserver(self) -> None:
        """Stops kube-apiserver and starts it again on the same port against the same etcd."""
        self.apiserver.stop()
        self._start_apiserver()

    def stop(self) -> None:
        self.apiserver.stop()
        self.etcd.stop()
        # The logs stay for reading; etcd's preallocated WAL files (64 MB) need not.
        shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ({p.log_path}) ---\n{tail(p.log_path)}" for p in (self.etcd, self.apiserver)
        )

    # --- clients -------------------------------------------------------------------------------------

    def _write_kubeconfig(self, filename: str, user: str, credentials: dict[str, str]) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testenv",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(_cert_pem(self.ca.cert)).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": {"cluster": "testenv", "user": user}}],
            "current-context": user,
        }
        return self._write(filename, yaml.safe_dump(config, sort_keys=False).encode())

    def user_kubeconfig(self, user: str, *, groups: Sequence[str] = (), filename: str | None = None) -> Path:
        """A kubeconfig that authenticates with a client cert as `user` (CN) in `groups` (O).

        Such a user can do only what RBAC grants it (or its groups): for least-privilege tests.
        """
        cert, key = self.ca.issue(user, organizations=groups)
        stem = filename.removesuffix(".kubeconfig") if filename else f"user-{user.replace(':', '_')}"
        self._write(f"{stem}.crt", cert)
        self._write(f"{stem}.key", key)
        return self._write_kubeconfig(
            f"{stem}.kubeconfig",
            user,
            {
                "client-certificate-data": base64.b64encode(cert).decode(),
                "client-key-data": base64.b64encode(key).decode(),
            },
        )

    def service_account_kubeconfig(self, namespace: str, name: str, *, duration: str = "1h") -> Path:
        """A kubeconfig with a bound token (TokenRequest API) for ServiceAccount `namespace/name`.

        Creates the ServiceAccount (and its namespace) if absent. It gets no RBAC of its own.
        """
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            },
        )
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        return self._write_kubeconfig(
            f"sa-{namespace}-{name}.kubeconfig", f"system:serviceaccount:{namespace}:{name}", {"token": token}
        )

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the built kubectl (admin unless `kubeconfig` is given); `check` fails the test on error."""
        argv = [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return self._run(argv, input, check)

    def apply(self, *objects: dict[str, object], kubeconfig: Path | None = None) -> None:
        """`kubectl apply` of objects given as dicts."""
        documents = yaml.safe_dump_all(objects, sort_keys=False)
        self.kubectl("apply", "-f", "-", input=documents, kubeconfig=kubeconfig)

    def run_helm(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Runs helm against this API server (admin), with helm's own state kept in the workdir."""
        return self._run([str(self.helm), *args], input, check)

    def _run(self, argv: list[str], input: str | None, check: bool) -> subprocess.CompletedProcess[str]:
        # Everything kubectl and helm cache or store goes to the workdir, never to the user's home:
        # discovery caches keyed by a random port would pile up there and could be stale after a restart.
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.workdir / "kube-cache"),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env, check=False
        )
        if check and result.returncode != 0:
            output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            pytest.fail(f"{' '.join(argv)} exited {result.returncode}\n{output}", pytrace=False)
        return result


# ---------------------------------------------------------------------------------------------------
# pytest wiring

_build_failure: str | None = None
_running: Kube | None = None


def _uses_kube(item: pytest.Item) -> bool:
    return "kube" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Builds missing binaries before any test runs: the build must not count against a test's timeout."""
    global _build_failure  # noqa: PLW0603 - one build per session, read by the fixture
    missing = Binaries.expected().missing()
    if not missing or config.option.collectonly or not any(_uses_kube(item) for item in items):
        return
    log_path = cache_root() / "testenv-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"building the Kubernetes test environment (missing {', '.join(p.name for p in missing)}); "
            f"the first build takes minutes, log: {log_path}"
        )
    with log_path.open("w") as log:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=log, stderr=subprocess.STDOUT, check=False
        )
    still_missing = Binaries.expected().missing()
    if result.returncode != 0 or still_missing:
        _build_failure = (
            f"scripts/testenv-build failed (exit {result.returncode}); missing: "
            f"{', '.join(str(p) for p in still_missing)}\n--- {log_path} ---\n{tail(log_path)}"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _uses_kube(item) and _running is not None:
        report.sections.append(("kube logs", _running.logs()))
    return report


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    global _running  # noqa: PLW0603 - the report hook reads the logs of the running environment
    if _build_failure is not None:
        pytest.fail(_build_failure, pytrace=False)
    binaries = Binaries.expected()
    if binaries.missing():
        pytest.fail(
            f"Kubernetes test binaries missing: {binaries.missing()} (run scripts/testenv-build)",
            pytrace=False,
        )
    environment = Kube(binaries, tmp_path_factory.mktemp("kube"))
    try:
        environment.start()
    except RuntimeError as error:
        environment.stop()
        pytest.fail(f"the Kubernetes test environment did not start: {error}", pytrace=False)
    _running = environment
    try:
        yield environment
    finally:
        _running = None
        environment.stop()
