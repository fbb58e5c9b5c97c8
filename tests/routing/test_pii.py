"""The PII recognisers: every kind found where it is valid, and not where it only looks alike."""

from __future__ import annotations

import itertools

import pytest

from parley.routing.pii import PII_KINDS, Finding, find_pii


def kinds(text: str) -> list[str]:
    return [f.kind for f in find_pii(text)]


def only(text: str) -> Finding:
    found = find_pii(text)
    assert len(found) == 1, found
    return found[0]


# --- payment cards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "my card is 4111 1111 1111 1111 thanks",
        "4111-1111-1111-1111",
        "card 4111111111111111.",
        "amex 3782 822463 10005",  # 15 digits
        "mastercard 5555 5555 5555 4444 expires 12 27",
        "four one one one one one one one one one one one one one one one",
        "four one double one, one one one one, one one one one, triple one one",
        "Four one one one 1111 one one one one 1111",
    ],
)
def test_pii_card_found_written_and_spoken(text: str) -> None:
    finding = only(text)
    assert finding.kind == "payment_card"
    assert finding.masked.endswith("1111") or finding.masked[-4:].isdigit()
    assert set(finding.masked[:-4]) == {"*"}


@pytest.mark.parametrize(
    "text",
    [
        "my order number is 1234 5678 9012 3456",  # fails Luhn
        "4111 1111 1111 1112",  # one digit off
        "1111 1111 1111 1117",  # passes Luhn, but no card starts with 1
        "four one one one one one one one one one one one one one one two",
        "I paid 4111 dollars in 2024 for 11 items",
    ],
)
def test_pii_card_not_found_without_checksum_or_prefix(text: str) -> None:
    assert "payment_card" not in kinds(text)


def test_pii_card_offsets_point_into_the_original_text() -> None:
    text = "ok so it is four one one one one one one one one one one one one one one one, right"
    finding = only(text)
    assert text[finding.start : finding.end].startswith("four")
    assert text[finding.start : finding.end].endswith("one")
    assert text[finding.end :] == ", right"


def test_pii_card_next_to_other_digits_is_found_on_group_boundaries() -> None:
    finding = only("4111 1111 1111 1111 1225")
    assert finding.kind == "payment_card"
    assert (finding.start, finding.end) == (0, 19)


# --- IBANs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tail"),
    [
        ("IBAN DE89 3704 0044 0532 0130 00 please", "3000"),
        ("GB82 WEST 1234 5698 7654 32", "5432"),
        ("pay to FR14 2004 1010 0505 0001 3M02 606", "2606"),
        ("NL91ABNA0417164300", "4300"),
        ("CH93 0076 2011 6238 5295 7", "2957"),
        ("ES91 2100 0418 4502 0005 1332", "1332"),
    ],
)
def test_pii_iban_found_in_several_countries(text: str, tail: str) -> None:
    finding = only(text)
    assert finding.kind == "iban"
    assert finding.masked.endswith(tail) and finding.masked.startswith("*")


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 01",  # bad check digits: not an IBAN, and not a card either
        "GB83 WEST 1234 5698 7654 32",
        "NL91ABNA0417164301",
        "XX89 3704 0044 0532 0130 00",  # no such country
    ],
)
def test_pii_iban_with_bad_checksum_is_nothing(text: str) -> None:
    assert kinds(text) == []


def test_pii_iban_stops_at_its_country_length() -> None:
    text = "DE89 3704 0044 0532 0130 00 and more"
    finding = only(text)
    assert text[finding.end :] == " and more"


# --- US social security numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "my social is 123-45-6789",
        "123 45 6789",
        "SSN 536225232",
        "my social security number is five three six two two five two three two",
    ],
)
def test_pii_ssn_found(text: str) -> None:
    finding = only(text)
    assert finding.kind == "us_ssn"
    assert finding.masked[:5] == "*****" and len(finding.masked) == 9


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "912-12-3456",  # area 9xx
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "078-05-1120",  # the wallet card number
        "order 536225232",  # nine digits without the words SSN or social security
    ],
)
def test_pii_ssn_invalid_or_without_context_is_not_an_ssn(text: str) -> None:
    assert "us_ssn" not in kinds(text)
    assert kinds(text) == [] or text.startswith("order")


# --- emails -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mail john.smith@example.com now", "j***@example.com"),
        ("write to a_b+tag@mail.example.co.uk.", "a***@mail.example.co.uk"),
        ("john dot smith at example dot com", "j***@example.com"),
        ("it's jane at acme dot org thanks", "j***@acme.org"),
    ],
)
def test_pii_email_found_and_masked(text: str, masked: str) -> None:
    finding = only(text)
    assert (finding.kind, finding.masked) == ("email", masked)


@pytest.mark.parametrize(
    "text", ["meet me at noon", "see the @ sign", "user@localhost", "a @ b dot", "look at this"]
)
def test_pii_email_lookalikes_are_not_emails(text: str) -> None:
    assert kinds(text) == []


# --- phones -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("call +1 (415) 555-2671", "+1******2671"),
        ("+14155552671", "+1******2671"),
        ("my number is (415) 555-2671", "+1******2671"),
        ("415-555-2671", "+1******2671"),
        ("+44 20 7946 0958", "+44******0958"),
        ("call 020 7946 0958", "+44******0958"),
        ("+49 30 12345678", "+49******5678"),
        ("plus four four two zero seven nine four six zero nine five eight", "+44******0958"),
        ("four one five five five five two six seven one", "+1******2671"),
    ],
)
def test_pii_phone_found_e164_and_national(text: str, masked: str) -> None:
    finding = only(text)
    assert (finding.kind, finding.masked) == ("phone", masked)


def test_pii_phone_german_national_form_is_a_phone() -> None:
    assert kinds("ruf an unter 030 12345678") == ["phone"]
    assert find_pii("ruf an unter 030 12345678", regions=("DE",))[0].masked == "+49******5678"


def test_pii_phone_plus_is_part_of_the_span() -> None:
    text = "call +1 415 555 2671"
    finding = only(text)
    assert text[finding.start : finding.end] == "+1 415 555 2671"


@pytest.mark.parametrize(
    "text",
    [
        "I have 12 apples",
        "it was 2024",
        "the total was 1,250,000 dollars",
        "order 123456",
        "room 101 on floor 3",
        "555-1234",  # no area code
        "12345678",
        "call 123 456 7890",  # no US area code starts with 1
        "pi is 3.14159265",
    ],
)
def test_pii_plain_numbers_are_not_phones(text: str) -> None:
    assert kinds(text) == []


# --- the entry point ----------------------------------------------------------------------------


def test_pii_several_kinds_in_order_without_overlap() -> None:
    text = (
        "I am jane@example.com, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, "
        "phone +44 20 7946 0958, social 123-45-6789"
    )
    found = find_pii(text)
    assert [f.kind for f in found] == ["email", "payment_card", "iban", "phone", "us_ssn"]
    for a, b in itertools.pairwise(found):
        assert a.end <= b.start


def test_pii_kinds_limit_the_search() -> None:
    text = "jane@example.com 4111 1111 1111 1111"
    assert [f.kind for f in find_pii(text, ["payment_card"])] == ["payment_card"]
    assert [f.kind for f in find_pii(text, ["email"])] == ["email"]
    assert find_pii(text, []) == []


def test_pii_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="credit_card"):
        find_pii("x", ["credit_card"])


def test_pii_finding_never_shows_the_raw_value() -> None:
    text = "card 4111 1111 1111 1111, jane@example.com, +1 415 555 2671, 123-45-6789"
    found = find_pii(text)
    assert {f.kind for f in found} == set(PII_KINDS) - {"iban"}
    shown = repr(found) + str(found)
    for raw in ("4111 1111", "41111111", "jane@", "5552671", "555 2671", "123-45", "12345"):
        assert raw not in shown


def test_pii_text_without_digits_is_cheap_and_empty() -> None:
    assert find_pii("ask not what your country can do for you") == []
    assert find_pii("") == []
