"""How the built-in probes show a row of the user's data: masked unless the user asked for it.

:func:`data_masker` gives a probe the :class:`audit.masking.TextMasker` for the audit: the
allow-list is every word of the project's own word lists and templates (``probes/data``), and
where Presidio is installed its entity types label what it finds (``<PERSON>``, ...). Every
other word becomes ``<WORD>``, so a name Presidio misses is masked as well.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING

from audit.masking import BASE_WORDS, Span, TextMasker, vocabulary

if TYPE_CHECKING:
    from audit.context import AuditContext

__all__ = ["data_masker", "known_words"]


@functools.lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Every word of the built-in word lists and templates, lower-cased, plus the base words."""
    words: set[str] = set(BASE_WORDS)
    stack = [resources.files("probes") / "data"]
    while stack:
        folder = stack.pop()
        for item in folder.iterdir():
            if item.is_dir():
                stack.append(item)
            elif item.name.endswith(".json"):
                words |= vocabulary(json.loads(item.read_text(encoding="utf-8")))
    return frozenset(words)


def _presidio() -> Callable[[list[str]], list[list[Span]]] | None:
    # Without Presidio (an optional extra) the allow-list alone still masks every unknown word.
    if importlib.util.find_spec("presidio_analyzer") is None:
        return None
    from privacy.probes import detect_entities

    return detect_entities


def data_masker(context: AuditContext | None, *, extra: Iterable[str] = ()) -> TextMasker | None:
    """The masker for rows of the data, or ``None`` when the user asked to see them verbatim.

    ``extra`` adds words the probe itself put into a text (e.g. configured demographic terms).
    """
    if context is not None and context.reveal_data:
        return None
    return TextMasker(allowed=known_words() | vocabulary(list(extra)), detector=_presidio())
