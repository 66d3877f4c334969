"""A throw-away CA, a server certificate for 127.0.0.1 and a client certificate whose key has a password."""

import subprocess
from pathlib import Path

KEY_PASSWORD = "k3y-passw0rd"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> Path:
    """ca.pem/ca.key, server.pem/server.key (unencrypted PKCS#8, as a PEM keystore of Kafka wants it),
    client.pem/client.key (encrypted with KEY_PASSWORD). Returns ``d``."""
    d.mkdir(parents=True, exist_ok=True)
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
    return d
