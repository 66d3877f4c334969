"""Java keystores for librdkafka: the reference deployment's SSL_KEYSTORE_LOCATION, SSL_TRUSTSTORE_LOCATION
and SSL_PASSWORD, turned into librdkafka settings.

A PKCS#12 keystore is handed to librdkafka as it is (``ssl.keystore.location``).
A JKS keystore is read with ``pyjks`` and handed over as PEM in memory
(``ssl.key.pem``, ``ssl.certificate.pem``); a truststore, JKS or PKCS#12, as
the PEM of its certificates (``ssl.ca.pem``). Nothing is written to disk. The
one password opens the stores and the key, as in the reference.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

JKS_MAGIC = bytes.fromhex("feedfeed")
JCEKS_MAGIC = bytes.fromhex("cececece")


class KeystoreError(ValueError):
    """A store could not be read: the message says which and why (never the password)."""


def _pem(kind: str, der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


def is_java_keystore(path: str) -> bool:
    return Path(path).read_bytes()[:4] in (JKS_MAGIC, JCEKS_MAGIC)


def _load_jks(path: str, password: str, what: str):  # type: ignore[no-untyped-def]
    import jks

    try:
        store = jks.KeyStore.load(path, password, try_decrypt_keys=False)
    except Exception as err:  # pyjks raises several kinds for a wrong password or a damaged file
        raise KeystoreError(f"{what} {path}: cannot read it as a Java keystore ({type(err).__name__})") from err
    return store


def keystore_conf(path: str, password: str) -> dict[str, str]:
    """librdkafka settings for the client key and certificate in a JKS or PKCS#12 keystore."""
    if not is_java_keystore(path):
        _check_pkcs12(path, password, "SSL_KEYSTORE_LOCATION")
        return {"ssl.keystore.location": path, "ssl.keystore.password": password}
    store = _load_jks(path, password, "SSL_KEYSTORE_LOCATION")
    entries = list(store.private_keys.values())
    if len(entries) != 1:
        raise KeystoreError(f"SSL_KEYSTORE_LOCATION {path}: holds {len(entries)} private keys, expected one")
    entry = entries[0]
    try:
        entry.decrypt(password)
    except Exception as err:
        raise KeystoreError(f"SSL_KEYSTORE_LOCATION {path}: SSL_PASSWORD does not open its key") from err
    chain = "".join(_pem("CERTIFICATE", der) for _, der in entry.cert_chain)
    return {"ssl.key.pem": _pem("PRIVATE KEY", entry.pkey_pkcs8), "ssl.certificate.pem": chain}


def truststore_conf(path: str, password: str) -> dict[str, str]:
    """librdkafka's ``ssl.ca.pem``: the certificates of a JKS or PKCS#12 truststore."""
    if is_java_keystore(path):
        store = _load_jks(path, password, "SSL_TRUSTSTORE_LOCATION")
        ders = [entry.cert for entry in store.certs.values()]
    else:
        ders = _pkcs12_certificates(path, password)
    if not ders:
        raise KeystoreError(f"SSL_TRUSTSTORE_LOCATION {path}: holds no certificate")
    return {"ssl.ca.pem": "".join(_pem("CERTIFICATE", der) for der in ders)}


def _check_pkcs12(path: str, password: str, what: str) -> None:
    _pkcs12_certificates(path, password, what)


def _pkcs12_certificates(path: str, password: str, what: str = "SSL_TRUSTSTORE_LOCATION") -> list[bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    try:
        loaded = pkcs12.load_pkcs12(Path(path).read_bytes(), password.encode() or None)
    except ValueError as err:
        raise KeystoreError(f"{what} {path}: neither a Java keystore nor PKCS#12 that SSL_PASSWORD opens") from err
    certificates = ([loaded.cert] if loaded.cert else []) + list(loaded.additional_certs)
    return [c.certificate.public_bytes(Encoding.DER) for c in certificates]
