"""Recognisers for the personal data a routing policy keys on, in a user's transcript or text.

Each kind is validated, not just pattern-matched: card numbers pass Luhn and start like a payment
card (2-6), IBANs pass mod-97 and their country's format, SSNs are valid area/group/serial
(``stdnum``), phone numbers are valid for their country (``phonenumbers``). Digits may be
written (``4111 1111 ...``, ``123-45-6789``) or spoken as ASR writes them (``four one one one``,
``oh``, ``double five``, ``plus four four``); offsets always point into the original text.

A :class:`Finding` holds only a masked value: nothing printable keeps the raw data. This module
is pure CPU work on one string; it must not log, and it never sees a session.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum import numdb
from stdnum.us import ssn as _ssn

__all__ = ["PHONE_REGIONS", "PII_KINDS", "Finding", "PIIKind", "find_pii"]

PIIKind = Literal["payment_card", "iban", "us_ssn", "email", "phone"]
PII_KINDS: tuple[str, ...] = get_args(PIIKind)
# Regions whose national phone formats are recognised ("020 7946 0958", "030 12345678"); a
# number with a leading + (or "plus") is recognised for every country.
PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE")


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of personal data: its kind, where it is in the text, and a masked form.

    ``masked`` keeps only what an operator may see (the last four characters of a card, IBAN or
    SSN; an email's first letter and domain; a phone's country code and last four digits).
    """

    kind: str
    start: int
    end: int
    masked: str


# --- spoken and written digits ------------------------------------------------------------------

_WORD_DIGITS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEATS = {"double": 2, "triple": 3}
# Every token that can be part of a number as speech or text; anything else between two of them
# (a word, a letter, a symbol) ends the number.
_DIGITISH = re.compile(
    r"\+|\d+|\b(?:" + "|".join([*_WORD_DIGITS, *_REPEATS, "plus"]) + r")\b", re.IGNORECASE
)
# What may stand between the groups of one number: spaces, dashes, dots, commas, slashes,
# the parentheses of an area code.
_GAP = re.compile(r"[\s\-\u2010-\u2015.,/()]*")
_LIST_GAP = re.compile(r"[,;]|\.\s")
# A cheap first look: text without any of these holds none of the kinds.
_MAYBE = re.compile(r"\d|@|\bdot\b|\b(?:" + "|".join(_WORD_DIGITS) + r")\b", re.IGNORECASE)


@dataclass(slots=True)
class _Group:
    """Digits written or spoken together ("4111", "four", "double five")."""

    digits: str
    start: int
    end: int
    spoken: bool


@dataclass(slots=True)
class _Run:
    """One number as the text gives it: groups with only separators between them."""

    groups: list[_Group]
    plus: int | None = None  # offset of a leading "+" or "plus"


def _runs(text: str) -> Iterator[_Run]:
    run: _Run | None = None
    plus: int | None = None
    repeat: tuple[int, int] | None = None  # (times, start) of a pending "double"/"triple"
    last_end = -1
    for m in _DIGITISH.finditer(text):
        token = m.group().lower()
        joined = last_end >= 0 and _GAP.fullmatch(text, last_end, m.start()) is not None
        if joined and run is not None and token[0].isdigit() and not run.groups[-1].spoken:
            # "2671, 123": a list of written numbers, not one number (spoken digits often
            # come with commas between them: "four one one one, one one ...").
            joined = _LIST_GAP.search(text, last_end, m.start()) is None
        if not joined:
            if run is not None:
                yield run
            run, plus, repeat = None, None, None
        last_end = m.end()
        if token in ("+", "plus"):
            if run is not None:
                yield run
            run, plus, repeat = None, m.start(), None
            continue
        if token in _REPEATS:
            repeat = (_REPEATS[token], m.start())
            continue
        spoken = not token[0].isdigit()
        digits = _WORD_DIGITS[token] if spoken else token
        start = m.start()
        if repeat is not None:
            times, start = repeat
            repeat = None
            if len(digits) != 1:  # "double 12" is not a way to say a number
                start, times = m.start(), 1
            digits *= times
        group = _Group(digits, start, m.end(), spoken)
        if run is None:
            run = _Run([group], plus)
            plus = None
        else:
            run.groups.append(group)
    if run is not None:
        yield run


def _digits(groups: Sequence[_Group]) -> str:
    return "".join(g.digits for g in groups)


def _windows(
    groups: Sequence[_Group], lo: int, hi: int, accept: Callable[[Sequence[_Group]], str | None]
) -> Iterator[tuple[int, int, str]]:
    """Greedy, left to right, longest first: spans of whole groups holding ``lo``-``hi`` digits
    that ``accept`` takes (it returns the masked value, or None)."""
    n = len(groups)
    counts = [0]
    for g in groups:
        counts.append(counts[-1] + len(g.digits))
    i = 0
    while i < n:
        taken = False
        for j in range(n, i, -1):
            size = counts[j] - counts[i]
            if size > hi:
                continue
            if size < lo:
                break
            masked = accept(groups[i:j])
            if masked is not None:
                yield i, j, masked
                i, taken = j, True
                break
        if not taken:
            i += 1


def _tail(value: str, keep: int = 4) -> str:
    return "*" * (len(value) - keep) + value[-keep:]


# --- the kinds ----------------------------------------------------------------------------------


def _card_shaped(groups: Sequence[_Group]) -> bool:
    """Written the way card numbers are: one block, groups of four, or 4-6-5 (Amex, Diners);
    spoken digits come in any grouping."""
    if len(groups) == 1 or any(g.spoken for g in groups):
        return True
    sizes = [len(g.digits) for g in groups]
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _card(groups: Sequence[_Group]) -> str | None:
    digits = _digits(groups)
    if digits[0] in "23456" and _card_shaped(groups) and _luhn.is_valid(digits):
        return _tail(digits)
    return None


def _ssn_shaped(groups: Sequence[_Group]) -> bool:
    """Written as 123-45-6789 or 123 45 6789: an SSN (or a mistyped one), never a phone."""
    return [len(g.digits) for g in groups] == [3, 2, 4] and not any(g.spoken for g in groups)


_SSN_CONTEXT = re.compile(r"\b(?:ssn|social security|social)\b", re.IGNORECASE)


def _ssn_accept(context: bool) -> Callable[[Sequence[_Group]], str | None]:
    def accept(groups: Sequence[_Group]) -> str | None:
        digits = _digits(groups)
        # 123-45-6789 or 123 45 6789 is an SSN by its shape; nine digits in one block or
        # spoken one by one need the words "SSN" or "social security" nearby.
        if not (_ssn_shaped(groups) or context):
            return None
        if _ssn.is_valid(digits):
            return _tail(digits)
        return None

    return accept


def _phone(digits: str, international: bool, regions: Sequence[str]) -> str | None:
    tries: Sequence[tuple[str, str | None]] = (
        [("+" + digits, None)] if international else [(digits, r) for r in regions]
    )
    for candidate, region in tries:
        # Where the trunk prefix is 0 (GB, DE, most of the world) a national number is written
        # with it: "020 7946 0958"; without it, it is some other number.
        if region is not None and _trunk_zero(region) and not candidate.startswith("0"):
            continue
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            national = str(number.national_number)
            return f"+{number.country_code}{_tail(national)}"
    return None


@functools.cache
def _trunk_zero(region: str) -> bool:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return getattr(metadata, "national_prefix", None) == "0"


_IBAN = re.compile(r"\b[A-Za-z]{2} ?\d{2}(?:[ -]?[A-Za-z0-9]){11,32}")
_IBAN_CHAR = re.compile(r"[A-Za-z0-9]")
_IBAN_DB = numdb.get("iban")


def _iban_length(compact: str) -> int | None:
    """The length of an IBAN of ``compact``'s country (None: no such IBAN country)."""
    info = _IBAN_DB.info(compact[:2])[0][1]
    bban = info.get("bban")
    return None if bban is None else 4 + sum(int(n) for n in re.findall(r"(\d+)!", bban))


def _ibans(text: str) -> Iterator[tuple[Finding | None, tuple[int, int]]]:
    """Each IBAN-shaped string: its finding (None: the checksum or format fails) and its span,
    which no other kind may claim (a mistyped IBAN's digits are not a card number)."""
    for m in _IBAN.finditer(text):
        # The pattern may run on into the next words: the country fixes the length.
        chars = [c.start() for c in _IBAN_CHAR.finditer(text, m.start(), m.end())]
        compact = "".join(text[p] for p in chars).upper()
        size = _iban_length(compact)
        if size is None or size > len(compact):
            continue
        span = (m.start(), chars[size - 1] + 1)
        if _iban.is_valid(compact[:size]):
            yield Finding("iban", *span, _tail(compact[:size])), span
        elif compact[:2] == text[m.start() : m.start() + 2]:  # "DE..", not a word like "to"
            yield None, span


_EMAIL = re.compile(
    r"\b[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)
# As ASR may write one: "john dot smith at example dot com".
_TLDS = "com|org|net|edu|gov|io|co|uk|de|fr|es|it|nl|ch|at|eu|us|ca|au|info|biz|me|ai"
_SPOKEN_EMAIL = re.compile(
    r"\b([A-Za-z0-9]+(?:\s+dot\s+[A-Za-z0-9]+)*)\s+at\s+"
    r"([A-Za-z0-9-]+(?:\s+dot\s+[A-Za-z0-9-]+)*\s+dot\s+(?:" + _TLDS + r"))\b",
    re.IGNORECASE,
)
_SPOKEN_DOT = re.compile(r"\s+dot\s+", re.IGNORECASE)


def _email_mask(local: str, domain: str) -> str:
    return f"{local[0]}***@{domain.lower()}"


def _emails(text: str) -> Iterator[Finding]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            local, _, domain = m.group().partition("@")
            yield Finding("email", m.start(), m.end(), _email_mask(local, domain))
    for m in _SPOKEN_EMAIL.finditer(text):
        domain = _SPOKEN_DOT.sub(".", m.group(2))
        yield Finding("email", m.start(), m.end(), _email_mask(m.group(1), domain))


# --- the one entry point ------------------------------------------------------------------------


def find_pii(
    text: str,
    kinds: Collection[str] | None = None,
    *,
    regions: Sequence[str] = PHONE_REGIONS,
) -> list[Finding]:
    """Every piece of personal data of ``kinds`` (default: all of :data:`PII_KINDS`) in
    ``text``, in the order it appears; no two findings overlap.

    A number is taken by the first kind that validates it, in the order IBAN, payment card,
    SSN, phone. Raises ValueError for a kind that is not in :data:`PII_KINDS`.
    """
    wanted = set(PII_KINDS if kinds is None else kinds)
    unknown = wanted.difference(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s): {', '.join(sorted(unknown))}")
    if not wanted or _MAYBE.search(text) is None:
        return []
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []  # spans no later kind may claim
    if "iban" in wanted:
        for finding, span in _ibans(text):
            if finding is not None:
                found.append(finding)
            taken.append(span)
    if "email" in wanted:
        for finding in _emails(text):
            if not _overlaps((finding.start, finding.end), taken):
                found.append(finding)
                taken.append((finding.start, finding.end))
    numbers = wanted & {"payment_card", "us_ssn", "phone"}
    if numbers:
        context: bool | None = None
        for run in _runs(text):
            # Digits inside an IBAN or email already found are theirs; what remains is split.
            for piece in _unclaimed(run.groups, taken):
                if len(_digits(piece)) < 7:
                    continue
                if context is None and "us_ssn" in numbers:
                    context = _SSN_CONTEXT.search(text) is not None
                plus = run.plus if piece[0] is run.groups[0] else None
                found.extend(_numbers(piece, numbers, bool(context), plus, regions))
    found.sort(key=lambda f: f.start)
    return found


def _overlaps(span: tuple[int, int], taken: Sequence[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)


def _unclaimed(groups: list[_Group], taken: Sequence[tuple[int, int]]) -> Iterator[list[_Group]]:
    piece: list[_Group] = []
    for g in groups:
        if _overlaps((g.start, g.end), taken):
            if piece:
                yield piece
            piece = []
        else:
            piece.append(g)
    if piece:
        yield piece


def _numbers(
    groups: list[_Group],
    kinds: set[str],
    context: bool,
    plus: int | None,
    regions: Sequence[str],
) -> Iterator[Finding]:
    """Cards, then SSNs in what the cards leave, then a phone number in what is left."""
    pieces = [groups]
    for kind, lo, hi, accept in (
        ("payment_card", 13, 19, _card),
        ("us_ssn", 9, 9, _ssn_accept(context)),
    ):
        if kind not in kinds:
            continue
        rest: list[list[_Group]] = []
        for piece in pieces:
            last = 0
            for i, j, masked in _windows(piece, lo, hi, accept):
                yield Finding(kind, piece[i].start, piece[j - 1].end, masked)
                if i > last:
                    rest.append(piece[last:i])
                last = j
            if last < len(piece):
                rest.append(piece[last:])
        pieces = rest
    if "phone" not in kinds:
        return
    for piece in pieces:
        digits = _digits(piece)
        if not 7 <= len(digits) <= 15 or _ssn_shaped(piece):
            continue
        first = plus is not None and piece[0] is groups[0]
        phone = _phone(digits, first, regions)
        if phone is not None:
            start = plus if first and plus is not None else piece[0].start
            yield Finding("phone", start, piece[-1].end, phone)
