"""The model kinds rai-audit knows: a leaf module, so the target and the probe contract share them
without importing each other."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["KINDS", "Kind"]

Kind = Literal["encoder", "masked-lm", "causal-lm", "sequence-classification", "seq2seq"]
KINDS: tuple[str, ...] = get_args(Kind)
