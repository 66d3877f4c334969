"""confluent_kafka's Schema Registry client, imported without the OAuth stack it never uses here.

confluent_kafka's registry client modules import Authlib's OAuth2 clients at
their top, for the OAuth bearer authentication (``bearer.auth.*``) that the
handler never configures (it speaks to the registry with basic auth and TLS
only). That import brings Authlib, joserfc and cryptography's Rust bindings:
11.3 MiB of the handler's 89 MiB at rest, for nothing.

So when this module is the first to import ``confluent_kafka.schema_registry``
(as in ``command-handler run`` and the endpoint), it does so with a stand-in
for ``authlib.integrations.httpx_client`` in ``sys.modules`` for the time of
that import only. The stand-in's two names are factories that import the real
Authlib class when called, so an OAuth client still works if one is ever built;
it is removed at once, so any later ``import authlib...`` gets the real package.
When the registry client or that Authlib module was imported before (the tools
and tests do), or when a release of confluent_kafka asks the stand-in for
anything else or does more with its names at import (the import then fails
with ImportError, AttributeError or TypeError), the client is imported the plain way:
the saving is lost, nothing else. The adapters import the client's names from
here, never from confluent_kafka directly.

The product imports this before it starts any thread of its own, so no other
import can meet the stand-in.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_OAUTH_MODULE = "authlib.integrations.httpx_client"
_DEFERRED = ("OAuth2Client", "AsyncOAuth2Client")


class _StandIn(types.ModuleType):
    """Authlib's module as far as the client's import needs it: the two factories, nothing else."""

    def __getattr__(self, name: str) -> Any:
        # AttributeError, as a module without the name raises: ``from ... import name`` turns it into the
        # ImportError that sends _import_client to the plain import
        raise AttributeError(
            f"{_OAUTH_MODULE} stands in for {_DEFERRED} only (command_handler.adapters.registry_client)"
        )


def _deferred(name: str) -> Any:
    def build(*args: Any, **kwargs: Any) -> Any:
        module = __import__(_OAUTH_MODULE, fromlist=[name])
        if isinstance(module, _StandIn):  # built while the client's import is still under way
            raise ImportError(f"{_OAUTH_MODULE}.{name} is not importable yet: the registry client is being imported")
        return getattr(module, name)(*args, **kwargs)

    build.__name__ = build.__qualname__ = name
    return build


def _forget_client() -> None:
    for name in [
        m
        for m in sys.modules
        if m == "confluent_kafka.schema_registry" or m.startswith("confluent_kafka.schema_registry.")
    ]:
        del sys.modules[name]


def _import_client() -> None:
    if "confluent_kafka.schema_registry" in sys.modules or _OAUTH_MODULE in sys.modules:
        return
    stand_in = _StandIn(_OAUTH_MODULE, "imported by name only: see command_handler.adapters.registry_client")
    for name in _DEFERRED:
        setattr(stand_in, name, _deferred(name))
    sys.modules[_OAUTH_MODULE] = stand_in
    try:
        import confluent_kafka.schema_registry  # noqa: F401
    except (ImportError, AttributeError, TypeError):
        # this release wants more of Authlib's module, or does more with its names at import (a subclass,
        # a check) than the stand-in answers: imported the plain way below
        _forget_client()
    finally:
        if sys.modules.get(_OAUTH_MODULE) is stand_in:
            del sys.modules[_OAUTH_MODULE]


_import_client()

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient  # noqa: E402
from confluent_kafka.schema_registry.error import SchemaRegistryError  # noqa: E402

__all__ = ["Schema", "SchemaRegistryClient", "SchemaRegistryError"]
