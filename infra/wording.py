"""How counts and cut text read in what people see: "1 order", "2 orders", "1,204 customers", "Hi, this…"."""

from __future__ import annotations


def counted(n: int | float, noun: str, plural: str | None = None) -> str:
    """`n noun`, with thousands separators, and the noun's plural (`noun + 's'` unless given) unless n is 1."""
    shown = f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"
    return f"{shown} {noun if n == 1 else (plural or noun + 's')}"


def clipped(text: str, most: int) -> str:
    """`text` if it has at most `most` characters, else its first `most - 1` and an ellipsis: a cut shows."""
    return text if len(text) <= most else text[: most - 1] + "…"
