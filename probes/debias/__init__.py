"""Debiasing techniques that produce a new model directory the audit can measure.

- :class:`SentenceDebias` (Liang et al. 2020) and :class:`INLP` (Ravfogel et al. 2020): projections
  learned on embeddings, saved beside an encoder or folded into a classifier's head.
- :class:`CDAFineTuner` (Webster et al. 2020; Zmigrod et al. 2019): counterfactual data
  augmentation with two-sided word swaps, then fine-tuning a classifier on original + swapped text.
- :class:`ThresholdPostprocessor` (Hardt et al. 2016, fairlearn ``ThresholdOptimizer``): group
  thresholds saved beside a classifier and applied by ``AuditTarget.predict``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probes.debias.cda import CDAFineTuner, Swapper, load_word_list
    from probes.debias.projection import INLP, SentenceDebias
    from probes.debias.threshold import ThresholdPostprocessor

__all__ = ["INLP", "CDAFineTuner", "SentenceDebias", "Swapper", "ThresholdPostprocessor", "load_word_list"]

# Imported on first use (PEP 562): the ``debias`` command is registered at every CLI start, and
# importing the techniques eagerly loaded scikit-learn and fairlearn for ``rai-audit --help`` too.
_HOME = {"CDAFineTuner": "cda", "Swapper": "cda", "load_word_list": "cda", "INLP": "projection",
         "SentenceDebias": "projection", "ThresholdPostprocessor": "threshold"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"probes.debias.{_HOME[name]}"), name)
    raise AttributeError(f"module 'probes.debias' has no attribute {name!r}")
