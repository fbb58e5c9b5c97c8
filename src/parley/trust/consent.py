"""Consent phrases for custom voices, and the check that a recording's transcript reads one.

Before parley makes a voice from someone's recording, that person must have recorded the consent
phrase of their language, naming the operator of the server (``trust.operator_name``). This
module holds the phrases (English, German, Spanish, French) and :func:`check_phrase`, a pure
function of the recogniser's transcript: the phrase must be read in full, in order; a few words
misrecognised (a word-level edit distance up to :data:`MAX_WORD_ERROR_RATE` of the phrase's
length) are tolerated, anything else before or after it is ignored. It must not recognise
speech itself nor know about storage or HTTP.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from parley.errors import ClientError, Code

__all__ = [
    "DEFAULT_OPERATOR",
    "MAX_WORD_ERROR_RATE",
    "PHRASES",
    "check_phrase",
    "consent_phrase",
    "phrase_language",
    "word_distance",
]

DEFAULT_OPERATOR: Final = "parley"
# Word errors tolerated, as a share of the phrase's words (recognisers miss a word or two).
MAX_WORD_ERROR_RATE: Final = 0.2

# Per primary language subtag; ``{operator}`` is the operator's name.
PHRASES: Final[dict[str, str]] = {
    "en": (
        "I am the owner of this voice and I consent to {operator} using this voice to create "
        "a synthetic voice model."
    ),
    "de": (
        "Ich bin der Eigentümer dieser Stimme und ich willige ein, dass {operator} diese "
        "Stimme verwendet, um ein synthetisches Stimmmodell zu erstellen."
    ),
    "es": (
        "Soy el propietario de esta voz y doy mi consentimiento para que {operator} utilice "
        "esta voz para crear un modelo de voz sintética."
    ),
    "fr": (
        "Je suis le propriétaire de cette voix et je consens à ce que {operator} utilise "
        "cette voix pour créer un modèle de voix synthétique."
    ),
}

_WORD = re.compile(r"[a-z0-9]+")


def phrase_language(language: str) -> str:
    """The primary subtag of a BCP 47 tag (``en-US`` -> ``en``) that has a phrase; else a 400
    on ``language``."""
    primary = language.strip().replace("_", "-").split("-", 1)[0].lower()
    if primary not in PHRASES:
        supported = ", ".join(sorted(PHRASES))
        raise ClientError(
            f"No consent phrase for language {language!r}; supported: {supported}.",
            param="language",
        )
    return primary


def consent_phrase(language: str, operator: str = DEFAULT_OPERATOR) -> str:
    """The phrase to read for ``language`` (a BCP 47 tag), naming ``operator``."""
    return PHRASES[phrase_language(language)].format(operator=operator)


def _words(text: str) -> list[str]:
    # Accents off (recognisers and speakers differ on them), case and punctuation off.
    folded = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c)).replace("ß", "ss")
    return _WORD.findall(plain)


def word_distance(phrase: list[str], heard: list[str]) -> int:
    """The fewest word edits turning ``phrase`` into some contiguous run of ``heard`` (words
    said before or after the phrase cost nothing). A compound written as two words, or two
    words as one ("Stimmmodell" heard as "stimm modell"), costs nothing either."""
    n = len(heard)
    # rows[i][j]: phrase[:i] against a run of heard ending at j; it may start anywhere.
    rows = [[0] * (n + 1)]
    for i, word in enumerate(phrase, 1):
        prev, row = rows[-1], [i] + [0] * n
        for j, other in enumerate(heard, 1):
            best = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (word != other))
            if j >= 2 and heard[j - 2] + other == word:
                best = min(best, prev[j - 2])
            if i >= 2 and phrase[i - 2] + word == other:
                best = min(best, rows[-2][j - 1])
            row[j] = best
        rows.append(row)
    return min(rows[-1])  # ... and end anywhere


def check_phrase(transcript: str, language: str, operator: str = DEFAULT_OPERATOR) -> None:
    """Return if ``transcript`` reads ``language``'s consent phrase naming ``operator``; else a
    400 ``consent_phrase_mismatch`` on ``recording``."""
    expected = consent_phrase(language, operator)
    phrase = _words(expected)
    errors = word_distance(phrase, _words(transcript))
    if errors > int(MAX_WORD_ERROR_RATE * len(phrase)):
        heard = transcript.strip() or "no speech"
        raise ClientError(
            f"The recording does not read the consent phrase in full. Expected: {expected!r}; "
            f"heard: {heard!r}.",
            param="recording",
            code=Code.CONSENT_PHRASE_MISMATCH,
        )
