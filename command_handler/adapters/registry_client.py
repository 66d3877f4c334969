"""confluent_kafka's Schema Registry client, imported without the OAuth stack it never uses here.

confluent_kafka's registry client modules import Authlib's OAuth2 clients at
their top, for the OAuth bearer authentication (``bearer.auth.*``) that the
handler never configures (it speaks to the registry with basic auth and TLS
only). That import brings Authlib, joserfc and cryptography's Rust bindings:
11.3 MiB of the handler's 89 MiB at rest, for nothing.

So the first import of ``confluent_kafka.schema_registry`` goes through here, with
a stand-in for ``authlib.integrations.httpx_client`` in ``sys.modules`` for the
time of that import only. Its two names are factories that import the real
Authlib class when called, so an OAuth client still works if one is ever built;
the stand-in is removed at once, so any later ``import authlib...`` gets the
real package. When the registry client was imported before (the tools and
tests do), this changes nothing. The adapters import the client's names from
here, never from confluent_kafka directly.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_OAUTH_MODULE = "authlib.integrations.httpx_client"


def _deferred(name: str) -> Any:
    def build(*args: Any, **kwargs: Any) -> Any:
        real = getattr(__import__(_OAUTH_MODULE, fromlist=[name]), name)
        return real(*args, **kwargs)

    build.__name__ = name
    return build


def _import_client() -> None:
    if "confluent_kafka.schema_registry" in sys.modules or _OAUTH_MODULE in sys.modules:
        return
    stand_in = types.ModuleType(_OAUTH_MODULE, "imported by name only: see command_handler.adapters.registry_client")
    stand_in.OAuth2Client = _deferred("OAuth2Client")  # type: ignore[attr-defined]
    stand_in.AsyncOAuth2Client = _deferred("AsyncOAuth2Client")  # type: ignore[attr-defined]
    sys.modules[_OAUTH_MODULE] = stand_in
    try:
        import confluent_kafka.schema_registry  # noqa: F401
    finally:
        if sys.modules.get(_OAUTH_MODULE) is stand_in:
            del sys.modules[_OAUTH_MODULE]


_import_client()

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient  # noqa: E402
from confluent_kafka.schema_registry.error import SchemaRegistryError  # noqa: E402

__all__ = ["Schema", "SchemaRegistryClient", "SchemaRegistryError"]
