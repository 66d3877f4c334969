"""The handler in an SSL-configured deployment: mutual TLS to Kafka (PEM files, key password), https registry.

On Apache Kafka the session's broker has a TLS listener of its own (client
certificates required). Tansu's own TLS flags do not work in the build we use,
so on Tansu stunnel terminates TLS in front of a Tansu that advertises the TLS
port. The https registry is stunnel in front of the stack's Apicurio Registry
(which serves plain http on loopback) with the session's certificates.
"""

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse
from uuid import uuid4

import pytest

from open_bank_devtools.loadtest.bank_client import BankClient
from open_bank_devtools.stack.local_stack import broker_binary

from ..certificates import KEY_PASSWORD, make_certificates
from ..conftest import Services, free_port
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


def wait_port(port: int, timeout_s: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not open")


def client_tls_env(certificates: Path, brokers: str, registry_url: str) -> dict[str, str]:
    return {
        "KAFKA_BROKERS": brokers,
        "KAFKA_SSL_CA_LOCATION": str(certificates / "ca.pem"),
        "KAFKA_SSL_CERTIFICATE_LOCATION": str(certificates / "client.pem"),
        "KAFKA_SSL_KEY_LOCATION": str(certificates / "client.key"),
        "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
        "SCHEMA_REGISTRY_URL": registry_url,
        "SCHEMA_REGISTRY_CA_LOCATION": str(certificates / "ca.pem"),
    }


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(10)


def https_registry(
    stunnel: str, directory: Path, certificates: Path, registry_url: str
) -> tuple[subprocess.Popen[bytes], str]:
    """stunnel serving https in front of the stack's registry (Apicurio, plain http): the process and its URL."""
    registry = urlparse(registry_url)
    port = free_port()
    (directory / "stunnel-registry.conf").write_text(
        f"""foreground = yes
pid =
[registry]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{registry.port}
cert = {certificates}/server.pem
key = {certificates}/server.key
"""
    )
    tunnel = subprocess.Popen(
        [stunnel, str(directory / "stunnel-registry.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port)
    return tunnel, f"https://127.0.0.1:{port}{registry.path}"


@pytest.fixture
def tls_env(services: Services, tmp_path: Path) -> Iterator[dict[str, str]]:
    if services.stack is None:
        pytest.skip("external services: this test builds its own TLS front")
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("stunnel4 is missing: scripts/setup.sh installs it")
    config = services.stack.config
    if config.broker == "kafka":
        assert config.tls_dir is not None, "the session's Kafka has a TLS listener"
        certificates = config.tls_dir
        registry, registry_url = https_registry(stunnel, tmp_path, certificates, services.env["SCHEMA_REGISTRY_URL"])
        try:
            yield {**services.env, **client_tls_env(certificates, config.tls_brokers, registry_url)}
        finally:
            stop(registry)
        return
    make_certificates(tmp_path)
    plain, tls = free_port(), free_port()
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
"""
    )
    tunnel = subprocess.Popen(
        [stunnel, str(tmp_path / "stunnel.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    registry, registry_url = https_registry(stunnel, tmp_path, tmp_path, services.env["SCHEMA_REGISTRY_URL"])
    try:
        wait_port(plain)
        wait_port(tls)
        yield {**services.env, **client_tls_env(tmp_path, f"127.0.0.1:{tls}", registry_url)}
    finally:
        stop(registry, tunnel, broker)


@pytest.fixture
def tls_world(tls_env: dict[str, str]) -> Iterator[World]:
    with isolated_world(tls_env, "tls" + uuid4().hex[:8]) as world:
        yield world


def test_handler_works_over_mutual_tls_and_https_registry(tls_world: World, tmp_path: Path) -> None:
    handler = HandlerProcess(tls_world, tmp_path, name="tls").wait_ready()
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


STORE_PASSWORD = "st0re-passw0rd"


def make_keystores(certificates: Path, out: Path, kind: str) -> tuple[Path, Path]:
    """The reference deployment's stores: the client key and certificate, and the CA, as JKS or PKCS#12."""
    keytool = shutil.which("keytool")
    if keytool is None:
        pytest.fail("keytool (the JDK) is missing: scripts/setup.sh installs a JDK")
    p12 = out / "client.p12"
    subprocess.run(
        ["openssl", "pkcs12", "-export", "-in", str(certificates / "client.pem"), "-inkey",
         str(certificates / "client.key"), "-passin", f"pass:{KEY_PASSWORD}", "-out", str(p12),
         "-passout", f"pass:{STORE_PASSWORD}", "-name", "client"],
        check=True, capture_output=True,
    )  # fmt: skip
    store_type = {"jks": "JKS", "p12": "PKCS12"}[kind]
    keystore, truststore = out / f"keystore.{kind}", out / f"truststore.{kind}"
    if kind == "jks":
        subprocess.run(
            [keytool, "-importkeystore", "-noprompt", "-srckeystore", str(p12), "-srcstoretype", "PKCS12",
             "-srcstorepass", STORE_PASSWORD, "-destkeystore", str(keystore), "-deststoretype", "JKS",
             "-deststorepass", STORE_PASSWORD, "-destkeypass", STORE_PASSWORD],
            check=True, capture_output=True,
        )  # fmt: skip
    else:
        shutil.copy(p12, keystore)
    subprocess.run(
        [keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(certificates / "ca.pem"),
         "-keystore", str(truststore), "-storetype", store_type, "-storepass", STORE_PASSWORD],
        check=True, capture_output=True,
    )  # fmt: skip
    return keystore, truststore


@pytest.mark.parametrize("kind", ["jks", "p12"])
def test_the_reference_ssl_variables_connect_over_mutual_tls(tls_world: World, tmp_path: Path, kind: str) -> None:
    certificates = Path(tls_world.env["KAFKA_SSL_CA_LOCATION"]).parent
    keystore, truststore = make_keystores(certificates, tmp_path, kind)
    reference = {
        **{name: "" for name in ("KAFKA_SSL_CA_LOCATION", "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION")},
        "KAFKA_SSL_KEY_PASSWORD": "",
        "SSL_KEYSTORE_LOCATION": str(keystore),
        "SSL_TRUSTSTORE_LOCATION": str(truststore),
        "SSL_PASSWORD": STORE_PASSWORD,
        "KAFKA_SSL_VERIFY_HOSTNAME": "false",  # as the reference deployment has it
    }
    handler = HandlerProcess(tls_world, tmp_path, name=f"stores-{kind}", **reference).wait_ready()
    client = BankClient(tls_world.settings)
    try:
        answer = client.wait_for(client.open_account(f"{kind}-user"))
        assert answer.record == "AccountCreationConfirmed"
    finally:
        client.close()
        assert handler.terminate() == 0
    output = handler.output()
    assert STORE_PASSWORD not in output and "PRIVATE KEY" not in output
