"""Cuts a stream of LLM text into clauses that TTS can speak while the LLM is still writing.

The first clause of a reply is cut early (at a comma once it has a few words) because the user
is waiting for it; later clauses are cut at sentence ends, or at clause punctuation once they are
long enough for natural prosody. Decimal points, common abbreviations and initials never cut.
A clause over ``max_chars`` is cut at the last space so that TTS never waits on a run-on.
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
_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:—–"
_CLOSERS = "\"')]}»”’"


class ClauseSegmenter:
    """Push text deltas, get back complete clauses; ``flush()`` returns what is left."""

    __slots__ = ("_buf", "_first", "first_min_chars", "max_chars", "min_chars")

    def __init__(self, *, first_min_chars: int = 12, min_chars: int = 40, max_chars: int = 240):
        self.first_min_chars = first_min_chars
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
        if len(buf) > self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None

    @staticmethod
    def _is_abbreviation(buf: str, dot: int) -> bool:
        m = re.search(r"([A-Za-z.]+)$", buf[:dot])
        if m is None:
            return False
        word = m.group(1).lower().rstrip(".")
        # A single capital letter before a dot is an initial ("J. Smith"), not a sentence end.
        return word in _ABBREVIATIONS or (len(word) == 1 and buf[dot - 1].isupper())
