"""Masking contact details in texts a report shows, for probes whose examples come from user data.

A light, dependency-free guard (e-mail addresses, URLs, long digit runs) for example texts in a
card when ``show_pii`` is off. Names are not masked: bias probes measure them. The Presidio-based
detection of ``privacy.pii`` is the tool for finding personal data itself.
"""

from __future__ import annotations

import re

__all__ = ["PII_PATTERNS", "redact_text"]

#: (pattern, replacement) pairs, applied in order.
PII_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<EMAIL>"),
    (re.compile(r"https?://\S+|www\.\S+"), "<URL>"),
    (re.compile(r"\+?\d[\d\s().-]{6,}\d"), "<NUMBER>"),
)


def redact_text(text: str, limit: int = 300) -> str:
    """Mask e-mail addresses, URLs and long digit runs, and shorten, before a user text is shown.

    Examples
    --------
    >>> from audit.masking import redact_text
    >>> redact_text("write to jo@example.com or call 555 123 4567")
    'write to <EMAIL> or call <NUMBER>'
    """
    for pattern, token in PII_PATTERNS:
        text = pattern.sub(token, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
