"""How numbers and tables are written in reports and cards.

Numbers are printed the way the reference study printed them (two decimals,
halves rounded up: +28.125 % is "+28.13"), so its tables can be compared line by line.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

DISPLAY_NAMES = {"base": "Base", "sft": "SFT", "dpo": "DPO", "sftdpo": "SFT+DPO", "sft+dpo": "SFT+DPO"}


def display(name: str) -> str:
    return DISPLAY_NAMES.get(name.lower(), name)


def fmt(x: float, places: int = 2, sign: bool = False) -> str:
    """Round half up, as the study's tables do (Python's round() would give 28.12 for 28.125)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    q = abs(q) if q.is_zero() else q  # no "-0.00"
    text = f"{q:.{places}f}"
    return "+" + text if sign and q > 0 else text


def fmt_rate(x: float) -> str:
    return fmt(x, 0) if float(x).is_integer() else fmt(x, 1)


def fmt_p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else fmt(p, 4)


def p_is(name: str, p: float) -> str:
    """'p = 0.0213' or 'p < 0.0001', for sentences."""
    text = fmt_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def ci(lo_hi: list[float] | None, places: int = 0) -> str:
    if lo_hi is None:
        return "[n/a]"
    return f"[{fmt(lo_hi[0], places)}, {fmt(lo_hi[1], places)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
