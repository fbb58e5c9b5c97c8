import pytest

from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.speech import clauses_of


def segment(deltas: list[str], **kw: int) -> list[str]:
    seg = ClauseSegmenter(**kw)
    out: list[str] = []
    for d in deltas:
        out.extend(seg.push(d))
    rest = seg.flush()
    return out + ([rest] if rest else [])


def words(text: str) -> list[str]:
    return [w + " " for w in text.split(" ")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
        # Abbreviations, initials and decimals do not end a sentence (eight words: too short
        # for a word cut).
        (
            "Dr. Smith met J. Doe at 3.5 pm. Then left.",
            ["Dr. Smith met J. Doe at 3.5 pm.", "Then left."],
        ),
        # The first clause is cut early at a comma; later commas wait for a longer clause.
        (
            "Well, I think so, and you, too. Next.",
            ["Well, I think so,", "and you, too.", "Next."],
        ),
        # A short opener is a clause of its own (its audio starts in a few tens of ms); a
        # comma after fewer than six characters is not worth a clause.
        (
            "Sorry, I don't have an answer to that. Bye.",
            ["Sorry,", "I don't have an answer to that.", "Bye."],
        ),
        ("Ok, fine. Bye.", ["Ok, fine.", "Bye."]),
        ('He said "stop." Then we went.', ['He said "stop."', "Then we went."]),
        ("No punctuation at all here", ["No punctuation at all here"]),
        ("Line one\nLine two", ["Line one", "Line two"]),
    ],
)
def test_segmenter_cuts_at_clause_boundaries(text: str, expected: list[str]) -> None:
    assert segment(words(text)) == expected
    # Character-by-character deltas give the same clauses.
    assert segment(list(text)) == expected


def test_segmenter_forces_a_cut_on_run_on_text() -> None:
    text = " ".join(["word"] * 100)
    out = segment(words(text), max_chars=50)
    assert all(len(c) <= 50 for c in out)
    assert " ".join(out).split() == text.split()


def test_segmenter_empty_and_whitespace() -> None:
    assert segment([]) == []
    assert segment(["   ", "\n"]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A first sentence without clause punctuation is cut after about six words, before a
        # preposition or conjunction where one comes; the rest streams at sentence ends.
        (
            "Your order has been shipped from our warehouse and should arrive on Thursday. "
            "Thanks for waiting.",
            [
                "Your order has been shipped",
                "from our warehouse and should arrive on Thursday.",
                "Thanks for waiting.",
            ],
        ),
        (
            "I can see that the refund for your last invoice was approved yesterday.",
            ["I can see that the refund", "for your last invoice was approved yesterday."],
        ),
        # No preposition near: cut after the sixth word.
        (
            "Please check the blue cable behind your modem right now.",
            ["Please check the blue cable behind", "your modem right now."],
        ),
        # A short first sentence is spoken whole: the cut waits for two words after it.
        ("Your order has been shipped today.", ["Your order has been shipped today."]),
        ("Sure, I can help you with that. Bye.", ["Sure, I can help you with that.", "Bye."]),
        # Clause punctuation first (once the clause has 12 characters) wins over the word cut.
        (
            "Thanks for calling, I will look up your order and the invoice now.",
            ["Thanks for calling,", "I will look up your order and the invoice now."],
        ),
        # Never ending on a function word ("to", "the", "your", "has").
        (
            "We need to send you a brand new card for your account.",
            ["We need to send you", "a brand new card for your account."],
        ),
        # Never inside a number, after a number, or after an abbreviation or initial.
        (
            "Dr. Smith will call you back at 3.5 pm tomorrow about the results.",
            ["Dr. Smith will call you back", "at 3.5 pm tomorrow about the results."],
        ),
        (
            "The total is 1,250 dollars and 50 cents with the delivery fee.",
            ["The total is 1,250 dollars", "and 50 cents with the delivery fee."],
        ),
        (
            "Ask for J. R. Smith at the front desk when you arrive.",
            ["Ask for J. R. Smith", "at the front desk when you arrive."],
        ),
        (
            "Call 555 0199 1234 8888 9999 7777 today and ask for billing.",
            ["Call 555 0199 1234 8888 9999 7777 today", "and ask for billing."],
        ),
        # Only the first clause is cut by words; later sentences stay whole.
        (
            "Hi there. Your order has been shipped from our warehouse today.",
            ["Hi there.", "Your order has been shipped from our warehouse today."],
        ),
    ],
)
def test_segmenter_cuts_a_long_first_clause_after_a_few_words(
    text: str, expected: list[str]
) -> None:
    assert segment(words(text)) == expected
    assert segment(list(text)) == expected
    assert clauses_of(text) == expected  # REST speech cuts a whole text the same way


@pytest.mark.parametrize("first_words", [0, 3, 6, 10])
def test_segmenter_word_cut_keeps_every_word(first_words: int) -> None:
    text = "the quick brown fox jumps over the lazy dog and then runs far away into the woods. Ok."
    out = segment(list(text), first_words=first_words)
    assert " ".join(out).split() == text.split()
    if first_words == 0:
        assert out == [text[:-4], "Ok."]
    else:
        assert len(out[0].split()) <= first_words + 2


def test_segmenter_word_cut_applies_again_after_flush() -> None:
    seg = ClauseSegmenter()
    for _ in range(2):
        out = seg.push("Your order has been shipped from our warehouse today ")
        assert out == ["Your order has been shipped"]
        assert seg.flush() == "from our warehouse today"
