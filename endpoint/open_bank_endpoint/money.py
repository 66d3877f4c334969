"""Amounts as the reference endpoint shows them: Dutch-formatted euros, such as ``€1.234,56``."""

from __future__ import annotations


def euro(cents: int) -> str:
    """Euro cents as a Dutch-formatted amount: ``€10,00``, ``€1.000,00``, ``€-5,00`` (the sign after the symbol,
    as the reference's money library writes it)."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"€{sign}{whole:,}".replace(",", ".") + f",{rest:02d}"
