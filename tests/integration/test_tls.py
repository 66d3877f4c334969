"""The handler in an SSL-configured deployment: mutual TLS to Kafka (PEM files, key password), https registry.

Tansu's own TLS flags do not work in the build we use, so stunnel terminates TLS
in front of a Tansu that advertises the TLS port, and in front of the registry.
"""

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse
from uuid import uuid4

import pytest

from command_handler.loadtest.bank_client import BankClient
from command_handler.localstack.stack import broker_binary

from ..conftest import Services, free_port
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration

KEY_PASSWORD = "k3y-passw0rd"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=open-bank test CA", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    openssl("genrsa", "-aes256", "-passout", f"pass:{KEY_PASSWORD}", "-out", "client.key", "2048", cwd=d)
    openssl("req", "-new", "-key", "client.key", "-passin", f"pass:{KEY_PASSWORD}", "-out", "client.csr",
            "-subj", "/CN=command-handler", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "client.pem", "-days", "2", cwd=d)  # fmt: skip


def wait_port(port: int, timeout_s: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not open")


@pytest.fixture
def tls_env(services: Services, tmp_path: Path) -> Iterator[dict[str, str]]:
    if services.stack is None:
        pytest.skip("external services: this test builds its own TLS front")
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("stunnel4 is missing: scripts/setup.sh installs it")
    make_certificates(tmp_path)
    plain, tls, registry_tls = free_port(), free_port(), free_port()
    registry_port = urlparse(services.env["SCHEMA_REGISTRY_URL"]).port
    broker = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{tls}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    (tmp_path / "stunnel.conf").write_text(
        f"""foreground = yes
pid =
[kafka]
accept = 127.0.0.1:{tls}
connect = 127.0.0.1:{plain}
cert = {tmp_path}/server.pem
key = {tmp_path}/server.key
CAfile = {tmp_path}/ca.pem
verify = 2
[registry]
accept = 127.0.0.1:{registry_tls}
connect = 127.0.0.1:{registry_port}
cert = {tmp_path}/server.pem
key = {tmp_path}/server.key
"""
    )
    tunnel = subprocess.Popen(
        [stunnel, str(tmp_path / "stunnel.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(plain)
        wait_port(tls)
        wait_port(registry_tls)
        yield {
            **services.env,
            "KAFKA_BROKERS": f"127.0.0.1:{tls}",
            "KAFKA_SSL_CA_LOCATION": str(tmp_path / "ca.pem"),
            "KAFKA_SSL_CERTIFICATE_LOCATION": str(tmp_path / "client.pem"),
            "KAFKA_SSL_KEY_LOCATION": str(tmp_path / "client.key"),
            "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
            "SCHEMA_REGISTRY_URL": f"https://127.0.0.1:{registry_tls}",
            "SCHEMA_REGISTRY_CA_LOCATION": str(tmp_path / "ca.pem"),
        }
    finally:
        tunnel.terminate()
        broker.terminate()
        tunnel.wait(10)
        broker.wait(10)


@pytest.fixture
def tls_world(tls_env: dict[str, str]) -> Iterator[World]:
    with isolated_world(tls_env, "tls" + uuid4().hex[:8]) as world:
        yield world


def test_handler_works_over_mutual_tls_and_https_registry(tls_world: World, tmp_path: Path) -> None:
    handler = HandlerProcess(tls_world, tmp_path, name="tls").wait_assigned()
    client = BankClient(tls_world.settings)
    try:
        answer = client.wait_for(client.open_account("tls-user"))
        assert answer.record == "AccountCreationConfirmed"
        deposit = client.transfer("tls-user", "", 1000, "cash", answer.value["iban"], "over tls")
        assert client.wait_for(deposit).record == "MoneyTransferConfirmed"
        assert client.wait_events(answer.value["iban"], 1)[0].value["new_balance"] == 1000
    finally:
        client.close()
        assert handler.terminate() == 0
    assert KEY_PASSWORD not in handler.output()


def test_without_a_client_certificate_the_handler_gives_up_clearly(tls_world: World, tmp_path: Path) -> None:
    handler = HandlerProcess(
        tls_world,
        tmp_path,
        name="nocert",
        KAFKA_SSL_CERTIFICATE_LOCATION="",
        KAFKA_SSL_KEY_LOCATION="",
        STARTUP_TIMEOUT_S="3",
    )
    assert handler.wait(60) == 1
    output = handler.output()
    assert "Kafka at 127.0.0.1:" in output and "no success within 3s" in output
    assert "Traceback" not in output
    assert KEY_PASSWORD not in output
