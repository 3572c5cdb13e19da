"""Keeping the user's data out of reports: allow-list masking of texts a card shows.

The rule (see the README, "Trust and safety"): no verbatim text from the user's dataset reaches
an artefact unless the user asks for it (``show_examples`` or ``show_pii``). A probe that shows a
row of the dataset shows it through :func:`mask_text` (or :func:`mask_tokens` for a token list):
spans found by a detector become their entity type (``<EMAIL>``, ``<PERSON>``, ...), and every
other word that is not in the allow-list (the project's own word lists and templates, plus
:data:`BASE_WORDS`) becomes :data:`WORD_TAG`. A name that no detector recognises is therefore
masked too: safety does not depend on the detector.

Free text that is not itself a row (an error message that may quote one, a model's continuation
that may repeat one) goes through :func:`scrub`, which replaces only the words that occur in the
dataset and are not allow-listed, so the rest of the message stays readable.

This module is dependency-free; the Presidio-based detector lives in ``privacy`` and is passed in
as ``entities`` spans.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BASE_WORDS",
    "PII_PATTERNS",
    "WORD_TAG",
    "TextMasker",
    "dataset_words",
    "mask_text",
    "mask_tokens",
    "pattern_spans",
    "redact_text",
    "scrub",
    "vocabulary",
]

#: What a word that is not allow-listed becomes.
WORD_TAG = "<WORD>"

#: (pattern, entity type) pairs for contact details and numbers, found without any model.
PII_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<EMAIL>"),
    (re.compile(r"https?://\S+|www\.\S+"), "<URL>"),
    (re.compile(r"\+?\d[\d\s().-]{6,}\d"), "<NUMBER>"),
)

#: Function words and other words too common to identify anyone, always allowed.
BASE_WORDS: frozenset[str] = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves one two three first last new good bad very really said says
say told went go goes going come came get got make made like think know see saw want wanted very
yes ok okay please thanks thank hello hi dear today yesterday tomorrow day week year time
""".split())  # noqa: SIM905 - a word list reads better as prose

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_SUBWORD_MARKS = re.compile(r"^(?:##|\u0120|\u2581|\u010a)+")

Span = tuple[int, int, str]


def vocabulary(value: Any) -> frozenset[str]:
    """Every word (lower-cased, without digits) in the strings of a nested JSON-like value."""
    out: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.update(w.lower() for w in _WORD.findall(item) if not any(c.isdigit() for c in w))
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return frozenset(out)


def pattern_spans(text: str) -> list[Span]:
    """Spans of e-mail addresses, URLs and long digit runs, as ``(start, end, "<TYPE>")``."""
    return [(m.start(), m.end(), label) for pattern, label in PII_PATTERNS for m in pattern.finditer(text)]


def _merged(spans: Iterable[Span]) -> list[Span]:
    """Non-overlapping spans: where two overlap, the earlier (then the longer) one wins, widened."""
    out: list[list[Any]] = []
    for start, end, label in sorted(spans, key=lambda s: (s[0], -s[1])):
        if out and start < out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end, label])
    return [(s, e, lab) for s, e, lab in out]


def _tag(label: str) -> str:
    return label if label.startswith("<") else f"<{label}>"


def _known(word: str, allowed: Collection[str]) -> bool:
    return not any(c.isdigit() for c in word) and word.lower().replace("\u2019", "'") in allowed


def _masked_ranges(text: str, allowed: Collection[str], entities: Iterable[Span]) -> list[Span]:
    """Every character range :func:`mask_text` replaces, with what it becomes."""
    # A detector's type wins over a pattern's on the same span (the sort is stable).
    spans = _merged([*((s, e, _tag(lab)) for s, e, lab in entities), *pattern_spans(text)])
    words = [(m.start(), m.end(), "<NUMBER>" if m.group().isdigit() else WORD_TAG)
             for m in _WORD.finditer(text) if not _known(m.group(), allowed)]
    inside = [(s, e) for s, e, _ in spans]
    words = [w for w in words if not any(s < w[1] and w[0] < e for s, e in inside)]
    return sorted([*spans, *words])


def mask_text(text: str, *, allowed: Collection[str], entities: Iterable[Span] = (), limit: int | None = 300) -> str:
    """``text`` with entity spans replaced by their type and every other unknown word by ``<WORD>``.

    Parameters
    ----------
    text : str
        A text from the user's data.
    allowed : collection of str
        Lower-case words that may be shown (word lists, templates); words with digits never are.
    entities : iterable of (start, end, type)
        Spans a detector found (Presidio); their type is shown instead of the words.
    limit : int or None, default=300
        Longest text returned; longer ones are cut and end with an ellipsis.

    Examples
    --------
    >>> from audit.masking import BASE_WORDS, mask_text
    >>> mask_text("She wrote to Zebulon Quargh at zq@example.com", allowed=BASE_WORDS | {"wrote"})
    'She wrote to <WORD> <WORD> at <EMAIL>'
    """
    out, pos = [], 0
    for start, end, label in _masked_ranges(text, allowed, entities):
        out.append(text[pos:start])
        out.append(label)
        pos = end
    out.append(text[pos:])
    masked = "".join(out)
    return masked if limit is None or len(masked) <= limit else masked[: limit - 1] + "\u2026"


def mask_tokens(text: str, tokens: Sequence[str], spans: Sequence[tuple[int, int]], special: Sequence[bool], *,
                allowed: Collection[str], entities: Iterable[Span] = ()) -> list[str]:
    """The tokens of ``text`` with every token that overlaps a masked range replaced by its tag.

    ``spans`` are the tokens' character offsets in ``text``; a token without offsets (``(0, 0)``)
    is kept only when it is punctuation or, without its sub-word marks, an allowed word.
    Special tokens are kept. One score per token stays valid: the list keeps its length.
    """
    ranges = _masked_ranges(text, allowed, entities)
    out = []
    for token, (start, end), is_special in zip(tokens, spans, special, strict=True):
        if is_special:
            out.append(token)
        elif end > start:
            hit = next((label for s, e, label in ranges if s < end and start < e), None)
            out.append(token if hit is None else hit)
        else:
            bare = _SUBWORD_MARKS.sub("", token).strip()
            keep = not _WORD.search(bare) or (_WORD.fullmatch(bare) is not None and _known(bare, allowed))
            out.append(token if keep else WORD_TAG)
    return out


def dataset_words(texts: Iterable[str], *, allowed: Collection[str] = BASE_WORDS) -> frozenset[str]:
    """The lower-cased words of ``texts`` that are not allowed: what :func:`scrub` removes."""
    out: set[str] = set()
    for text in texts:
        out.update(w.lower() for w in _WORD.findall(str(text)))
    return frozenset(w for w in out if any(c.isdigit() for c in w) or w.replace("\u2019", "'") not in allowed)


def scrub(text: str, private: Collection[str]) -> str:
    """``text`` with contact details, digit runs and every word in ``private`` replaced by a tag.

    For free text that may quote the data (error messages, tracebacks, a model's continuation):
    the words the text shares with the dataset (:func:`dataset_words`) are masked, the rest stays.
    """
    out, pos = [], 0
    for start, end, label in _merged(pattern_spans(text)):
        out.append(_scrub_words(text[pos:start], private))
        out.append(label)
        pos = end
    out.append(_scrub_words(text[pos:], private))
    return "".join(out)


def _scrub_words(segment: str, private: Collection[str]) -> str:
    return _WORD.sub(lambda m: WORD_TAG if m.group().lower() in private else m.group(), segment)


class TextMasker:
    """Masks rows of the user's data for display, with an optional entity detector.

    Parameters
    ----------
    allowed : collection of str
        Lower-case words that may be shown; :data:`BASE_WORDS` is always added.
    detector : callable, optional
        Maps a list of texts to one list of ``(start, end, entity_type)`` spans per text
        (the Presidio pass of ``privacy``). Without one, unknown words still become ``<WORD>``.

    Examples
    --------
    >>> from audit.masking import TextMasker
    >>> TextMasker(allowed={"called"}).text("Ann called Zebulon on +44 20 7946 0958")
    '<WORD> called <WORD> on <NUMBER>'
    """

    def __init__(self, *, allowed: Collection[str] = (), detector: Callable[[list[str]], list[list[Span]]] | None = None,
                 ) -> None:
        self.allowed = allowed
        self.detector = detector
        self._words = frozenset(w.lower() for w in allowed) | BASE_WORDS
        self._entities: dict[str, list[Span]] = {}

    def prepare(self, texts: Iterable[str]) -> None:
        """Run the detector once over many texts (batched) before they are masked one by one."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._entities))
        if todo and self.detector is not None:
            self._entities.update(zip(todo, self.detector(todo), strict=True))

    def entities(self, text: str) -> list[Span]:
        """The detector's spans in ``text`` (none without a detector)."""
        self.prepare([text])
        return self._entities.get(text, [])

    def text(self, text: str, *, limit: int | None = 300) -> str:
        """``text`` masked with :func:`mask_text`."""
        return mask_text(text, allowed=self._words, entities=self.entities(text), limit=limit)

    def tokens(self, text: str, tokens: Sequence[str], spans: Sequence[tuple[int, int]],
               special: Sequence[bool]) -> list[str]:
        """``tokens`` masked with :func:`mask_tokens`."""
        return mask_tokens(text, tokens, spans, special, allowed=self._words, entities=self.entities(text))

    def word(self, word: str) -> str:
        """One word as shown: itself when allowed, else ``<WORD>`` (``<NUMBER>`` for digits)."""
        return mask_text(word, allowed=self._words, limit=None)


def redact_text(text: str, limit: int = 300) -> str:
    """Mask e-mail addresses, URLs and long digit runs only, and shorten.

    Not enough for a row of the user's data (names stay): use :func:`mask_text` for those. This
    is for texts that are not the user's, e.g. a model's continuation of a built-in prompt.

    Examples
    --------
    >>> from audit.masking import redact_text
    >>> redact_text("write to jo@example.com or call 555 123 4567")
    'write to <EMAIL> or call <NUMBER>'
    """
    for pattern, token in PII_PATTERNS:
        text = pattern.sub(token, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
