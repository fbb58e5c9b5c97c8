"""Cuts a stream of LLM text into clauses that TTS can speak while the LLM is still writing.

The first clause of a reply is cut early because the caller hears nothing until it is spoken (a
neural voice synthesises a clause whole before its first sample): at clause punctuation once it
has ``first_min_chars``, or, when the first sentence runs on without any, at a word boundary
after about ``first_words`` words. That word cut waits until three more words have come (so a
sentence ending there is spoken whole, with no orphan word after the cut), prefers the boundary
before a conjunction or preposition ("shipped | from our warehouse", up to one word past
``first_words``), and never leaves a clause ending on a function word ("the", "has", "to"), a
number ("at 3 | pm") or an abbreviation or initial ("Dr. | Smith"). Later clauses are cut at
sentence ends, or at clause punctuation once they are long enough for natural prosody. Decimal
points, common abbreviations and initials never cut. A clause over ``max_chars`` is cut at the
last space so that TTS never waits on a run-on.

``first_words`` = 6 is measured (``benchmarks/bench_quality.py``, Piper voice en_US-joe-medium,
2-core CPU shared with other work, three runs): first audio of six support-line replies p50
66-80 ms, p95 208-258 ms, against p50 227-514 ms, p95 441-832 ms when the whole first sentence
was the first clause. Four words was no faster on average (p50 51-116 ms) and gave choppier
three-word clauses; eight was slower (p50 91-103 ms). No later clause came late against
real-time playback (a first clause of at least ~0.5 s of audio hides the next one's synthesis),
and Whisper hears the cut replies as well as the uncut ones.

``first_min_chars`` = 6 lets a short opener ("Sorry,", "Sure,") be the first clause: in
``parley bench realtime --sessions 4 --turns 6`` on the neural defaults (2 cores) TTS first
audio fell from 267 / 512 ms (p50 / p95) with 12 to 111 / 255 ms, with no underruns (both
runs with ``pipeline.tts_lead_ms`` 2000).
"""

from __future__ import annotations

import re

__all__ = ["ClauseSegmenter"]

_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "no",
        "fig",
        "approx",
        "dept",
        "inc",
        "ltd",
        "co",
    ]
)
# A first clause cut at a word boundary prefers to end before one of these ...
_BREAK_BEFORE_WORDS = (
    "and but or so because for with from on in at by that which who when where if while "
    "until before after about into since unless although though as"
)
_BREAK_BEFORE = frozenset(_BREAK_BEFORE_WORDS.split())
# ... and never ends on one of these (it would sound cut off mid-phrase).
_NO_CUT_AFTER_WORDS = (
    "a an the my your his her its our their this that these those some any each every no "
    "to of for with from on in at by into about as than and but or so if nor "
    "is are was were be been being am has have had will would can could should may might must "
    "do does did not i we they he she i'm you're we're they're it's i'll you'll we'll "
    "i've you've we've very just also please mr mrs ms dr"
)
_NO_CUT_AFTER = frozenset(_NO_CUT_AFTER_WORDS.split())
_WORD = re.compile(r"\S+")
_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:—–"
_CLOSERS = "\"')]}»”’"


class ClauseSegmenter:
    """Push text deltas, get back complete clauses; ``flush()`` returns what is left."""

    __slots__ = ("_buf", "_first", "first_min_chars", "first_words", "max_chars", "min_chars")

    def __init__(
        self,
        *,
        first_min_chars: int = 6,
        first_words: int = 6,
        min_chars: int = 40,
        max_chars: int = 240,
    ):
        self.first_min_chars = first_min_chars
        self.first_words = first_words
        """Cut a first clause with no punctuation near this many words (0: never)."""
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._first = True

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while (cut := self._find_cut()) is not None:
            clause, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if clause:
                out.append(clause)
                self._first = False
        return out

    def flush(self) -> str | None:
        rest, self._buf = self._buf.strip(), ""
        self._first = True
        return rest or None

    def _find_cut(self) -> int | None:
        buf = self._buf
        cut = self._punctuation_cut(buf)
        if self._first and self.first_words > 0:
            early = self._word_cut(buf, len(buf) if cut is None else cut)
            if early is not None:
                return early
        if cut is not None:
            return cut
        if len(buf) > self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None

    def _punctuation_cut(self, buf: str) -> int | None:
        min_clause = self.first_min_chars if self._first else self.min_chars
        for i, ch in enumerate(buf):
            if i + 1 >= len(buf):
                break  # need to see the next character to know a boundary is real
            nxt = buf[i + 1]
            if ch == "\n":
                return i + 1
            if ch in _SENTENCE_END and (nxt.isspace() or nxt in _CLOSERS):
                if ch == "." and self._is_abbreviation(buf, i):
                    continue
                end = i + 1
                while end < len(buf) and buf[end] in _CLOSERS:
                    end += 1
                return end
            if ch in _CLAUSE_END and nxt.isspace() and i + 1 >= min_clause:
                return i + 1
        return None

    def _word_cut(self, buf: str, end: int) -> int | None:
        """Where to cut a first clause at a word boundary before ``end`` (where punctuation
        would cut it; see the module docstring). ``None`` until ``first_words`` + 3 whole
        words have come before ``end``: the choice depends on those words only, so a stream
        of deltas and a whole text are cut alike."""
        # A word is whole once something follows it (or it ends at the punctuation cut).
        words = [m for m in _WORD.finditer(buf, 0, end) if m.end() < len(buf)]
        tail = 2
        if len(words) < self.first_words + 1 + tail:
            return None
        lowest = max(2, self.first_words // 2)
        names = [w.group().lower().strip("\"'()[]{}«»“”‘’") for w in words]

        def can_end(k: int) -> bool:  # the clause may end after its k-th word
            word = names[k - 1]
            return (
                word not in _NO_CUT_AFTER
                and not word.endswith(".")
                and not any(c.isdigit() for c in word)
                and any(c.isalnum() for c in word)
                and not words[k].group()[0].isdigit()
            )

        near = [k for k in range(lowest, self.first_words + 1) if can_end(k)]
        # Before a conjunction or preposition, even one word past first_words.
        before_break = [k for k in [*near, self.first_words + 1] if names[k] in _BREAK_BEFORE]
        before_break = [k for k in before_break if k in near or can_end(k)]
        if before_break or near:
            k = (before_break or near)[-1]
        else:
            later = [k for k in range(self.first_words + 1, len(words) - tail + 1) if can_end(k)]
            if not later:
                return None
            k = later[0]
        return words[k].start()

    @staticmethod
    def _is_abbreviation(buf: str, dot: int) -> bool:
        m = re.search(r"([A-Za-z.]+)$", buf[:dot])
        if m is None:
            return False
        word = m.group(1).lower().rstrip(".")
        # A single capital letter before a dot is an initial ("J. Smith"), not a sentence end.
        return word in _ABBREVIATIONS or (len(word) == 1 and buf[dot - 1].isupper())
