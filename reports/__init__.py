"""Reports of rai-audit: the self-contained HTML model card and the Hugging Face README card."""

from reports.markdown_card import render_markdown_card
from reports.model_card import render_html_card, write_reports

__all__ = ["render_html_card", "render_markdown_card", "write_reports"]
