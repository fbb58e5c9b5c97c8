import pytest

from parley.pipeline.segmenter import ClauseSegmenter


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
        # Abbreviations, initials and decimals do not end a sentence.
        (
            "Dr. Smith met J. Doe at 3.5 pm. Then left.",
            ["Dr. Smith met J. Doe at 3.5 pm.", "Then left."],
        ),
        # The first clause is cut early at a comma; later commas wait for a longer clause.
        (
            "Well, I think so, and you, too. Next.",
            ["Well, I think so,", "and you, too.", "Next."],
        ),
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
