"""Kubernetes quantities, parsed and written as apimachinery's resource.Quantity does (v0.34): the one parser that
pydantic validation, the CRD's pattern and the renderer share.

A quantity is an exact decimal (never a float): a signed number, then a binary suffix (Ki..Ei), a decimal one
(n, u, m, k, M, G, T, P, E) or a decimal exponent (e3, E-2). Parsing rounds a value finer than a nano up (away
from zero) and caps a binary one at 2^63-1; the canonical form that the API server stores has no fraction and the
largest suffix that keeps every digit: "1.5" is "1500m", "1.5m" is "1500u", "+1Gi" is "1Gi", "1.5Gi" is "1536Mi".
The renderer writes what the API server will store, so a live object compares equal to what was applied.
"""

from __future__ import annotations

import decimal
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

Format = Literal["DecimalSI", "BinarySI", "DecimalExponent"]

# The grammar apimachinery parses, as a pattern: the API server (CRD schema) and pydantic both use it. Stricter
# than apimachinery in two places only: an exponent has at most two digits and the whole string at most
# MAX_LENGTH characters, so a value is never too large to parse exactly.
QUANTITY_PATTERN: Final = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,2})?$"
# The same without a minus sign: what container resources and volume sizes take.
NONNEGATIVE_PATTERN: Final = QUANTITY_PATTERN.replace("^[+-]?", "^[+]?", 1)
MAX_LENGTH: Final = 64
# Larger than any sensible request, and what apimachinery's int64 accessors can still hold.
MAX_VALUE: Final = Decimal(2**63 - 1)

_PATTERN: Final = re.compile(QUANTITY_PATTERN)
_DECIMAL: Final = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX: Final = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_BINARY_SUFFIX: Final = {exponent // 10: suffix for suffix, exponent in _BINARY.items()}
_NANO: Final = Decimal("1e-9")
# Exact arithmetic for every value the pattern admits (at most 64 digits, exponents up to 99, 2^60).
_EXACT: Final = decimal.Context(
    prec=400, Emax=10**6, Emin=-(10**6), traps=[decimal.Inexact, decimal.Overflow]
)
_ROUNDING: Final = decimal.Context(prec=400, Emax=10**6, Emin=-(10**6), traps=[decimal.Overflow])


class QuantityError(ValueError):
    """Not a Kubernetes quantity; the message says what one looks like."""


@dataclass(frozen=True)
class Quantity:
    amount: Decimal  # exact, after apimachinery's rounding and cap
    format: Format

    @classmethod
    def parse(cls, text: str | int) -> Quantity:
        if isinstance(text, bool):
            raise QuantityError(f"{text!r} is not a Kubernetes quantity")
        if isinstance(text, int):
            text = str(text)
        if len(text) > MAX_LENGTH or not _PATTERN.match(text):
            raise QuantityError(
                f"{text[:MAX_LENGTH]!r} is not a Kubernetes quantity: use e.g. 500m, 2, 1.5, 512Mi or 16Gi"
            )
        match = re.match(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)$", text)
        assert match is not None, "the pattern admits only what this splits"
        sign, whole, fraction, suffix = match.groups()
        digits = Decimal(f"{whole or '0'}.{fraction or '0'}", context=_EXACT)
        fmt: Format
        if suffix in _BINARY:
            amount, fmt = _EXACT.multiply(digits, Decimal(2 ** _BINARY[suffix])), "BinarySI"
        elif suffix in _DECIMAL:
            amount, fmt = _EXACT.scaleb(digits, _DECIMAL[suffix]), "DecimalSI"
        else:
            amount, fmt = _EXACT.scaleb(digits, int(suffix[1:])), "DecimalExponent"
        if amount:
            # Finer than a nano rounds up, away from zero: "if you want some resources, you get some".
            amount = amount.quantize(_NANO, rounding=decimal.ROUND_UP, context=_ROUNDING)
        if fmt == "BinarySI":
            amount = min(amount, MAX_VALUE)
            if 0 < amount < 1:
                fmt = "DecimalSI"
        return cls(-amount if sign == "-" else amount, fmt)

    def __str__(self) -> str:
        """The canonical form, as the API server writes it back (CanonicalizeBytes)."""
        if not self.amount:
            return "0"
        sign, magnitude = ("-" if self.amount < 0 else ""), abs(self.amount)
        fmt = self.format
        if fmt == "BinarySI" and (magnitude < 1024 or magnitude != magnitude.to_integral_value()):
            fmt = "DecimalSI"  # no rounding: small or fractional binary values are written as decimals
        if fmt == "BinarySI":
            number, power = int(magnitude), 0
            while number % 1024 == 0:
                number, power = number // 1024, power + 1
            return f"{sign}{number}{_BINARY_SUFFIX.get(power, '')}"
        _, digit_tuple, exponent = magnitude.normalize(context=_EXACT).as_tuple()
        assert isinstance(exponent, int), "a finite value"
        number = int("".join(map(str, digit_tuple)))
        while exponent % 3:
            number, exponent = number * 10, exponent - 1
        if fmt == "DecimalExponent":
            return f"{sign}{number}{f'e{exponent}' if exponent else ''}"
        # apimachinery v0.34 has no suffix above E: it drops the exponent. Values that large are refused by
        # bounded() before they get here.
        return f"{sign}{number}{_DECIMAL_SUFFIX.get(exponent, '')}"

    def rounded_up(self, exponent: int) -> Quantity:
        """Rounded up (away from zero) to a multiple of 10^exponent, in the same format (RoundUp)."""
        step = Decimal(1).scaleb(exponent)
        return Quantity(self.amount.quantize(step, rounding=decimal.ROUND_UP, context=_ROUNDING), self.format)

    def value(self) -> int:
        """The value as a whole number of units, rounded up (apimachinery's Value())."""
        return math.ceil(self.amount)

    def bounded(self, what: str = "a quantity") -> Quantity:
        """Itself, when at least 0 and at most 2^63-1; else QuantityError naming `what`."""
        if self.amount < 0:
            raise QuantityError(f"{what} cannot be negative: {self}")
        if self.amount > MAX_VALUE:
            raise QuantityError(f"{what} is too large: at most {MAX_VALUE} (8Ei)")
        return self


def canonical(text: str | int) -> str:
    """`text` in the form the API server stores it."""
    return str(Quantity.parse(text))


def in_resource_list(text: str | int) -> str:
    """`text` as the API server stores it in a ResourceList (a container's requests and limits, a claim's
    storage): rounded up to a milli-unit, then canonical ("1.5m" is "2m")."""
    return str(Quantity.parse(text).rounded_up(-3))


def amount(text: str | int) -> Decimal:
    """The exact value of `text`, e.g. 0.5 for "500m"."""
    return Quantity.parse(text).amount
