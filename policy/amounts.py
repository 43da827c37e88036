"""Amounts and durations as the policy file writes them ("1.5 ether", "250 ACME", "24h"), exact.
Native amounts become int wei when the file is parsed; token amounts keep their unit until the
proxy hands each token's on-chain `decimals()` to the evaluation."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from fractions import Fraction

# Units of ether by their power of ten (the names web3 and ethers accept).
ETHER_UNITS: Mapping[str, int] = {
    "wei": 0,
    "kwei": 3,
    "mwei": 6,
    "gwei": 9,
    "szabo": 12,
    "finney": 15,
    "ether": 18,
}
DURATION_UNITS: Mapping[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# A uint256 holds at most 78 decimal digits: larger exponents are typos, and refusing them keeps
# "1e999999999" from costing a long computation.
_MAX_EXPONENT = 80
UINT256_MAX = 2**256 - 1

_NUMBER = r"(?P<digits>[0-9][0-9_]*(?:\.[0-9][0-9_]*)?|\.[0-9][0-9_]*)(?:[eE](?P<exp>[+-]?[0-9]+))?"
_AMOUNT = re.compile(rf"(?P<sign>-)?{_NUMBER}(?:\s*(?P<unit>[A-Za-z_][A-Za-z0-9_-]*))?")
_DURATION = re.compile(r"(?P<count>[0-9]+)\s*(?P<unit>[smhd])")


class AmountError(ValueError):
    """A token amount that cannot be counted in the token's smallest unit at evaluation: the
    token's decimals are unknown, or the amount has more decimals than the token."""


@dataclass(frozen=True)
class TokenAmount:
    """An amount written with a token's unit, "250 ACME": `contract` is the key in `contracts`."""

    contract: str
    units: Fraction

    def __str__(self) -> str:
        return f"{_decimal_text(self.units)} {self.contract}"


Amount = int | TokenAmount


def parse_amount(
    value: object, tokens: Collection[str] = (), *, signed: bool = False, units: bool = True
) -> Amount:
    """An amount from the file: an int, or a string such as "1.5 ether", "1000e18", "250 ACME".

    Without a unit, the number counts the smallest unit (wei, or a token's base unit) and must
    be whole. `tokens` are the contract names allowed as units; `units=False` refuses every unit
    (counts of transactions and gas). Raises ValueError with a message naming what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        if isinstance(value, float):
            raise ValueError(
                f"{value!r} is not exact: write it as a string with a unit, such as "
                f'"{value} ether", or as a whole number'
            )
        raise ValueError(f'expected an amount such as "5 ether" or 1000, not {value!r}')
    if isinstance(value, int):
        number = Fraction(value)
        unit = None
    else:
        match = _AMOUNT.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f'"{value}" is not an amount: write a number and a unit, such as "1.5 ether", '
                '"20 gwei", "1000e18" or "250 ACME"'
            )
        number = _number(match.group("digits"), match.group("exp"), value)
        if match.group("sign"):
            number = -number
        unit = match.group("unit")
    if number < 0 and not signed:
        raise ValueError(f'"{value}" is negative: amounts are zero or more')
    if unit is not None and not units:
        raise ValueError(f'"{value}" carries a unit: write a plain count, such as 60')
    if unit is not None and unit in tokens:
        return TokenAmount(unit, number)
    exponent = ETHER_UNITS.get(unit or "wei")
    if exponent is None:
        known = ", ".join(ETHER_UNITS) + (
            f", or a contract: {', '.join(sorted(tokens))}" if tokens else ""
        )
        raise ValueError(f'"{value}": unknown unit "{unit}" (known: {known})')
    scaled = number * 10**exponent
    if scaled.denominator != 1:
        raise ValueError(f'"{value}" is not a whole number of wei')
    if abs(scaled) > UINT256_MAX:
        raise ValueError(f'"{value}" is more than a uint256 holds')
    return int(scaled)


def token_amount(amount: Amount, decimals: Mapping[str, int]) -> int:
    """`amount` in the smallest unit: an int as is, a TokenAmount scaled by its token's decimals.
    Raises AmountError when the decimals are not given or the result is not whole."""
    if isinstance(amount, int):
        return amount
    places = decimals.get(amount.contract)
    if places is None:
        raise AmountError(f"the decimals of {amount.contract} are not known")
    scaled = amount.units * 10**places
    if scaled.denominator != 1:
        raise AmountError(
            f'"{amount}" is not a whole number of {amount.contract}\'s smallest unit '
            f"({amount.contract} has {places} decimals)"
        )
    return int(scaled)


def parse_duration(value: object) -> int:
    """Seconds from "30s", "5m", "24h", "7d"; at least one second. Raises ValueError."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected a duration such as "30s", "5m", "24h" or "7d", not {value!r}')
    seconds = int(match.group("count")) * DURATION_UNITS[match.group("unit")]
    if seconds <= 0:
        raise ValueError(f'"{value}" is no time at all: a duration is at least 1s')
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact text of a duration: 86400 -> "1d", 90 -> "90s"."""
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # pragma: no cover - "s" always divides


def format_wei(wei: int) -> str:
    """An exact, readable native amount that parse_amount reads back: "1.5 ether", "20 gwei"."""
    if abs(wei) >= 10**15:
        return f"{_decimal_text(Fraction(wei, 10**18))} ether"
    if abs(wei) >= 10**6:
        return f"{_decimal_text(Fraction(wei, 10**9))} gwei"
    return f"{wei} wei"


def format_units(amount: int, places: int, symbol: str) -> str:
    """A token amount counted in its smallest unit, shown with the token's unit: "2.5 ACME"."""
    return f"{_decimal_text(Fraction(amount, 10**places))} {symbol}"


def _number(digits: str, exponent: str | None, text: str) -> Fraction:
    power = int(exponent) if exponent else 0
    if abs(power) > _MAX_EXPONENT:
        raise ValueError(f'"{text}": the exponent is out of range')
    return Fraction(digits.replace("_", "")) * Fraction(10) ** power


def _decimal_text(value: Fraction) -> str:
    """Exact decimal text of a fraction whose denominator divides a power of ten."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
        if places > 2 * _MAX_EXPONENT:  # not a decimal fraction: show it as one
            return f"{sign}{value.numerator}/{value.denominator}"
    digits = str(int(value * 10**places)).rjust(places + 1, "0")
    whole, fraction = digits[: len(digits) - places], digits[len(digits) - places :]
    return f"{sign}{whole}.{fraction}" if places else f"{sign}{whole}"
