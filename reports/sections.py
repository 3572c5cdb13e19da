"""What the cards share: how probe results are grouped into sections, and Markdown escaping.

A leaf module, so the HTML card (:mod:`reports.model_card`) and the Hub card
(:mod:`reports.markdown_card`) each import it and neither imports the other.
"""

from __future__ import annotations

import re
from typing import Any

from audit.results import AuditResults

__all__ = ["CATEGORIES", "group_by_category", "md_escape"]

#: The card's groups of probes, in order; a probe with an unknown category goes under "other".
CATEGORIES = (("bias", "Bias and fairness"), ("privacy", "Privacy"), ("transparency", "Transparency"),
              ("other", "Other probes"))


def group_by_category(results: AuditResults) -> list[tuple[str, str, list[Any]]]:
    """Probe results grouped for the card: ``(category, title, results)``, empty groups left out."""
    known = {key for key, _ in CATEGORIES}
    groups: dict[str, list[Any]] = {key: [] for key, _ in CATEGORIES}
    for r in results.results:
        groups[r.category if r.category in known else "other"].append(r)
    return [(key, title, groups[key]) for key, title in CATEGORIES if groups[key]]


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md_escape(value: object) -> str:
    """Escape text for a Markdown table cell: HTML and Markdown syntax become literal, newlines spaces.

    Examples
    --------
    >>> from reports.sections import md_escape
    >>> md_escape("<script>a|b</script>")
    '&lt;script&gt;a\\\\|b&lt;/script&gt;'
    """
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"\s+", " ", text)
    return _MD_SPECIAL.sub(lambda m: m.group(1) if m.group(1) in "<>" else "\\" + m.group(1), text).strip()
