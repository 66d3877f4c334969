"""Account tokens: 20 random decimal digits from a cryptographically secure source."""

import secrets

TOKEN_LENGTH = 20


def new_token() -> str:
    return f"{secrets.randbelow(10**TOKEN_LENGTH):0{TOKEN_LENGTH}d}"
