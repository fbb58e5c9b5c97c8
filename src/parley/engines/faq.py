"""The offline ``faq`` LLM: answers from a file of questions and answers by full-text search.

It stands in for a language model when none is configured, so parley can hold a conversation on
a laptop with nothing else installed. It retrieves, it never generates: the last user message is
matched against the knowledge file with SQLite FTS5 (porter stemming, BM25 ranking), and when no
entry matches well enough it says so plainly rather than answering something unrelated. It never
calls tools and ignores images.

The knowledge file is JSON Lines, one ``{"question": ..., "answer": ..., "tags": [...]}`` per
line (``tags`` optional). The default one, about parley itself, ships as package data.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from parley.engines.base import (
    ChatRequest,
    Finish,
    LLMEvent,
    Message,
    TextDelta,
    Usage,
    estimate_message_tokens,
    estimate_tokens,
)
from parley.errors import ConfigError

__all__ = [
    "FAQLLM",
    "NO_ANSWER",
    "FAQEntry",
    "FAQIndex",
    "FAQMatch",
    "content_words",
    "load_knowledge",
    "split_words",
]

NO_ANSWER = (
    "Sorry, I don't have an answer to that. I can tell you about parley: ask me how to start it, "
    "or how to connect a real language model."
)

# BM25 column weights: a word in the question says more about what an entry is for than the same
# word in its answer; tags are curated synonyms, in between.
_WEIGHTS = (4.0, 1.0, 2.0)

# Words that carry no topic, left out of content searches and of the overlap an answer needs.
# Kept short on purpose: BM25 already discounts common words.
_STOPWORD_TEXT = """
    a about all am an and any anything are as at be been but by can could d did do does doing
    don for from get got had has have how i if im in into is it its just know let like ll m me
    my need of on or please re s say should so some something t tell than that the their them
    then there these they this to um uh up us ve want was we well were what when where which who
    why will with would you your
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_WORD = re.compile(r"[^\W_]+")
# Only the last words of a long utterance are searched, which bounds a search to about 2 ms.
_MAX_QUERY_WORDS = 64
# Where one phrasing of a question ends and the next begins.
_CLAUSE = re.compile(r"[?!;,]+|\.(?=\s|$)")


@dataclass(frozen=True, slots=True)
class FAQEntry:
    question: str
    answer: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FAQMatch:
    """Why an entry was chosen.

    ``via`` is ``"question"`` when the user repeated one of its phrasings nearly word for word,
    ``"content"`` when it ranked best on the user's content words. ``score`` is the BM25 rank
    negated (higher is better); ``matched`` of the ``searched`` query words occur in the entry.
    """

    entry: FAQEntry
    via: Literal["question", "content"]
    score: float
    matched: int
    searched: int


@dataclass(frozen=True, slots=True)
class _Hit:
    row: int
    score: float
    # The query words the row holds, and those of them it holds outside an entry's answer.
    words: frozenset[str]
    topical: frozenset[str]
    # How many rows hold the rarest of those words.
    rarest: int

    @property
    def weight(self) -> float:
        """Words held, those found only in the answer counting half: an entry's question and
        tags say what it is about, its answer merely mentions things ("small and old")."""
        return len(self.topical) + 0.5 * len(self.words - self.topical)


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits only), in order, duplicates dropped."""
    return list(dict.fromkeys(_WORD.findall(text.lower())))


def content_words(words: Iterable[str]) -> list[str]:
    """``words`` without the function words that carry no topic."""
    return [w for w in words if w not in _STOPWORDS]


def _default_knowledge() -> str:
    return resources.files("parley").joinpath("data/parley_faq.jsonl").read_text(encoding="utf-8")


def load_knowledge(path: Path | str | None = None) -> tuple[FAQEntry, ...]:
    """Read a knowledge file (``None``: the bundled one about parley).

    Raises :class:`ConfigError` naming the file, and the line when one is malformed.
    """
    where = "the bundled parley_faq.jsonl" if path is None else str(path)
    if path is None:
        text = _default_knowledge()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(
                f"faq knowledge file {where} not found", param="llm.knowledge"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"cannot read faq knowledge file {where}: {exc.strerror}", param="llm.knowledge"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"faq knowledge file {where} is not UTF-8 text", param="llm.knowledge"
            ) from exc
    entries = [
        _parse_line(line, where, number)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not entries:
        raise ConfigError(f"faq knowledge file {where} has no entries", param="llm.knowledge")
    return tuple(entries)


def _parse_line(line: str, where: str, number: int) -> FAQEntry:
    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"faq knowledge file {where}, line {number}: {why}", param="llm.knowledge"
        )

    try:
        record = json.loads(line)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise bad('expected an object like {"question": ..., "answer": ...}')
    question, answer, tags = record.get("question"), record.get("answer"), record.get("tags", [])
    if not isinstance(question, str) or not question.strip():
        raise bad('"question" must be a non-empty string')
    if not isinstance(answer, str) or not answer.strip():
        raise bad('"answer" must be a non-empty string')
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad('"tags" must be a list of strings')
    unknown = sorted(set(record) - {"question", "answer", "tags"})
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}")
    return FAQEntry(question.strip(), answer.strip(), tuple(tags))


class FAQIndex:
    """Finds the entry that answers a question, or none; safe to call from any thread.

    Two in-memory FTS5 tables with the porter stemmer: ``entry`` (question, answer, tags) for
    ranking by content words, and ``phrasing``, one row per sentence or clause of each question
    (a question field may hold several phrasings: "Hello, hi there, good morning"), for matching
    what the user said against what an entry's question says.

    One connection guarded by a lock: a search takes well under a millisecond for a spoken
    question (about 2 ms for the longest, 64 words) on the bundled entries, so contention is no
    concern and callers may search inline on the event loop.

    An entry answers when either rule holds:

    - *question*: the user repeated one of its phrasings nearly word for word: at least two of
      its words and ``question_coverage`` of them, with every content word the user said among
      them ("who are you", "what is parley"; BM25 cannot find these: their words are function
      words or the product's name, found in half the entries and so weighted zero);
    - *content*: it ranks best by BM25 over the user's content words; it holds at least
      ``min_coverage`` of those words and at least one, a word found only in its answer counting
      half (a weak recogniser garbles some words, so not all are required); and at least one of
      the words it holds is distinctive, held by at most ``max_share`` of the entries (or by
      this entry alone), so a match on the product's name alone answers nothing.

    The last rule is the minimum score. It is not a threshold on the BM25 value itself: FTS5
    clamps the weight of any word found in half the rows or more to nearly zero, so in a small
    knowledge file every score is nearly zero and one fixed threshold would silence it.
    """

    def __init__(
        self,
        entries: Sequence[FAQEntry],
        *,
        min_coverage: float = 0.5,
        max_share: float = 1 / 3,
        question_coverage: float = 0.6,
    ) -> None:
        self._entries = tuple(entries)
        self._max_share = max_share
        self._min_coverage = min_coverage
        self._question_coverage = question_coverage
        # (entry number, distinct word count) of each phrasing, by phrasing row.
        self._phrasings: list[tuple[int, int]] = []
        phrasing_rows: list[tuple[int, str]] = []
        for number, entry in enumerate(self._entries):
            for clause in _CLAUSE.split(entry.question):
                if split_words(clause):
                    phrasing_rows.append((len(self._phrasings), clause))
                    self._phrasings.append((number, len(split_words(clause))))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        # Closed with the index, quietly (Python 3.13 warns about connections left to the GC).
        self._finalizer = weakref.finalize(self, self._db.close)
        with self._lock, self._db:
            self._db.execute(
                "CREATE VIRTUAL TABLE entry USING fts5(question, answer, tags, tokenize='porter')"
            )
            self._db.execute("CREATE VIRTUAL TABLE phrasing USING fts5(text, tokenize='porter')")
            self._db.executemany(
                "INSERT INTO entry (rowid, question, answer, tags) VALUES (?, ?, ?, ?)",
                ((i, e.question, e.answer, " ".join(e.tags)) for i, e in enumerate(self._entries)),
            )
            self._db.executemany("INSERT INTO phrasing (rowid, text) VALUES (?, ?)", phrasing_rows)

    @property
    def entries(self) -> tuple[FAQEntry, ...]:
        return self._entries

    def match(self, text: str) -> FAQMatch | None:
        """The entry that answers ``text``, or None when nothing answers it well enough."""
        words = split_words(text)[-_MAX_QUERY_WORDS:]
        content = content_words(words)
        with self._lock:
            return self._by_question(words, content) or self._by_content(content)

    def _by_question(self, words: list[str], content: list[str]) -> FAQMatch | None:
        best: tuple[float, _Hit] | None = None
        for hit in self._search("phrasing", words):
            size = self._phrasings[hit.row][1]
            coverage = len(hit.words) / size
            if (
                len(hit.words) >= 2
                and coverage >= self._question_coverage
                and hit.words.issuperset(content)
                and (best is None or coverage > best[0])
            ):
                best = (coverage, hit)
        if best is None:
            return None
        hit = best[1]
        entry = self._entries[self._phrasings[hit.row][0]]
        return FAQMatch(entry, "question", hit.score, len(hit.words), len(words))

    def _by_content(self, content: list[str]) -> FAQMatch | None:
        hits = self._search("entry", content)
        if not hits:
            return None
        best = hits[0]
        if best.weight < max(1.0, self._min_coverage * len(content)):
            return None
        if best.rarest > max(1.0, self._max_share * len(self._entries)):
            return None
        return FAQMatch(
            self._entries[best.row], "content", best.score, len(best.words), len(content)
        )

    def _search(self, table: Literal["entry", "phrasing"], words: Sequence[str]) -> list[_Hit]:
        """Rows holding any of ``words``, best BM25 rank first, with the words each holds.

        ``words`` come from :func:`split_words`, letters and digits only, and each is quoted as
        an FTS string: no user text is ever parsed as query syntax.
        """
        if not words:
            return []
        terms = {w: f'"{w}"' for w in words}
        # Which words each row holds, through the same stemmer as the ranking.
        held: dict[int, set[str]] = {}
        topical: dict[int, set[str]] = {}
        for word, term in terms.items():
            for (row,) in self._db.execute(
                f"SELECT rowid FROM {table} WHERE {table} MATCH ?", (term,)
            ):
                held.setdefault(row, set()).add(word)
            if table == "entry":
                for (row,) in self._db.execute(
                    "SELECT rowid FROM entry WHERE entry MATCH ?", ("{question tags} : " + term,)
                ):
                    topical.setdefault(row, set()).add(word)
        rank = "bm25(entry, ?, ?, ?)" if table == "entry" else "bm25(phrasing)"
        weights = _WEIGHTS if table == "entry" else ()
        rows = self._db.execute(
            f"SELECT rowid, {rank} AS r FROM {table} WHERE {table} MATCH ? ORDER BY r",
            (*weights, " OR ".join(terms.values())),
        ).fetchall()
        holders = Counter(word for row_words in held.values() for word in row_words)
        return [
            _Hit(
                row,
                -float(r),
                frozenset(held[row]),
                frozenset(held[row] if table == "phrasing" else topical.get(row, ())),
                min(holders[w] for w in held[row]),
            )
            for row, r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._finalizer()


class FAQLLM:
    """The ``faq`` engine: an LLM that answers from a knowledge file (see :class:`FAQIndex`
    for when it answers; the defaults were tuned on paraphrases of the bundled questions, with
    words dropped or misheard as a weak recogniser would, against unrelated questions and noise).
    """

    name = "faq"
    supports_vision = False

    def __init__(
        self,
        knowledge: Path | str | None = None,
        *,
        min_coverage: float = 0.5,
        max_share: float = 1 / 3,
        question_coverage: float = 0.6,
        no_answer: str = NO_ANSWER,
    ) -> None:
        self.index = FAQIndex(
            load_knowledge(knowledge),
            min_coverage=min_coverage,
            max_share=max_share,
            question_coverage=question_coverage,
        )
        self._no_answer = no_answer

    def answer(self, text: str) -> str:
        found = self.index.match(text)
        return self._no_answer if found is None else found.entry.answer

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        # The search takes well under a millisecond, so it runs inline rather than in a thread.
        # Tools, if offered, are ignored: this engine never calls them.
        answer = self.answer(_last_user_text(request.messages))
        for piece in _word_pieces(answer):
            yield TextDelta(piece)
        prompt = sum(estimate_message_tokens(m) for m in request.messages)
        yield Usage(prompt, estimate_tokens(answer))
        yield Finish("stop")


def _last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text
    return ""


_PIECE = re.compile(r"\S+\s*")


def _word_pieces(text: str) -> list[str]:
    """``text`` cut into words, each with the spaces after it; leading space joins the first."""
    pieces = _PIECE.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    if pieces and lead:
        pieces[0] = lead + pieces[0]
    return pieces or ([text] if text else [])
