"""The endpoint's own errors, in one place: what its adapters translate Kafka's, the registry's and the
database's failures into, and what its entrypoints report."""

from __future__ import annotations


class EndpointError(Exception):
    """Base of the endpoint's errors."""


class EndpointConfigError(EndpointError, ValueError):
    """The configuration is invalid; the message lists every problem."""


class NotReady(EndpointError):
    """The endpoint still waits for a service; the message says which."""


class NotYet(EndpointError):
    """Something the endpoint needs is not there yet (a topic, a subject); it keeps waiting."""


class Unreadable(EndpointError):
    """A record that can never be read (not Confluent-framed Avro, a schema id the registry refuses, a body
    that does not decode): it is skipped."""


class RegistryDown(EndpointError):
    """The registry did not answer for a schema id not seen yet: the record is read again later."""


class StoreUnavailable(EndpointError):
    """The endpoint's database failed a request. The message is what a client may read (no SQL, no
    parameters); the cause is logged."""
