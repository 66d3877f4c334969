"""The project's own kinds of error, all in one place: adapters translate what their libraries raise into
these, so the service layer and the consumer loop decide what to do without knowing a driver or a client
library.

* ``OperatorError``: something an operator fixes (the command line prints one line, no traceback);
  ``NotReady``, a service that did not answer within the start-up time.
* ``InfrastructureError``: a dependency failed an operation. ``Conflict``: retry now. ``Unavailable``:
  retry later, with backoff, the handler not-ready meanwhile (``RegistryUnavailable``, ``Backpressure``).
  ``Rejected``: this input is refused for good (``IncompatibleSchema``). ``Fenced``: the transactional
  producer cannot go on (inside that adapter only: it replaces the producer and raises ``Unavailable``).
  ``OutputRefused``: an output can never be written as it is.
* ``PoisonMessage``: a record that can never become a command (set aside); ``SchemaNotYetKnown``: a
  record whose schema id the registry does not know yet (its partition is held, then it is poison).
"""


class OperatorError(RuntimeError):
    """Something an operator can fix: a service not reachable, a port taken, a schema conflict.
    The command line reports it as one clear line and a non-zero exit, without a traceback."""


class NotReady(OperatorError):
    """A service did not answer within the time allowed (``retry.retry``)."""


class InfrastructureError(Exception):
    """A dependency (database, registry, broker) failed an operation."""


class Conflict(InfrastructureError):
    """Concurrent transactions collided (deadlock, serialization failure): retry the transaction now."""


class Unavailable(InfrastructureError):
    """The dependency cannot be reached or cannot serve now: retry later, with backoff."""


class RegistryUnavailable(Unavailable):
    """The Schema Registry did not answer; try again later."""


class Backpressure(Unavailable):
    """The output cannot take more now (the producer's queue is full): wait, then send the rest."""


class Rejected(InfrastructureError):
    """The dependency refuses this input for good: retrying the same input cannot help."""


class IncompatibleSchema(Rejected):
    """The registry refuses a schema under a subject: it is incompatible with the versions there."""


class Fenced(InfrastructureError):
    """The transactional producer can no longer be used (a fatal librdkafka error). Raised and handled inside
    ``TransactionalOutput``, which replaces the producer and raises ``Unavailable``: it never reaches the loop."""


class OutputRefused(InfrastructureError):
    """Output ``index`` of a batch was refused before sending and can never be written as it is."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


class PoisonMessage(Exception):
    """A record that can never become a command; it is set aside (dead-letter topic).
    ``kind`` names the class of problem in a few fixed words (a metric label)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class SchemaNotYetKnown(Exception):
    """The registry does not know a record's schema id (yet: a lagging follower, a registry restored from a
    backup). Only the record's partition waits for it, for the codec's grace; then the record is poison."""
