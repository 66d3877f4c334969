"""The project's own kinds of error: adapters translate what their libraries raise into these, so the
service layer and the consumer loop decide what to do without knowing a driver or a client library."""


class OperatorError(RuntimeError):
    """Something an operator can fix: a service not reachable, a port taken, a schema conflict.
    The command line reports it as one clear line and a non-zero exit, without a traceback."""


class InfrastructureError(Exception):
    """A dependency (database, registry) failed an operation."""


class Conflict(InfrastructureError):
    """Concurrent transactions collided (deadlock, serialization failure): retry the transaction now."""


class Unavailable(InfrastructureError):
    """The dependency cannot be reached or cannot serve now: retry later, with backoff."""


class Rejected(InfrastructureError):
    """The dependency refuses this input for good: retrying the same input cannot help."""


class IncompatibleSchema(Rejected):
    """The registry refuses a schema under a subject: it is incompatible with the versions there."""
