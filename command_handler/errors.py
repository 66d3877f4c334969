"""Errors the command line reports as one clear line and a non-zero exit, without a traceback."""


class OperatorError(RuntimeError):
    """Something an operator can fix: a service not reachable, a port taken, a schema conflict."""
