"""Debiasing techniques that produce a new model directory the audit can measure.

- :class:`SentenceDebias` (Liang et al. 2020) and :class:`INLP` (Ravfogel et al. 2020): projections
  learned on embeddings, saved beside an encoder or folded into a classifier's head.
- :class:`CDAFineTuner` (Webster et al. 2020; Zmigrod et al. 2019): counterfactual data
  augmentation with two-sided word swaps, then fine-tuning a classifier on original + swapped text.
- :class:`ThresholdPostprocessor` (Hardt et al. 2016, fairlearn ``ThresholdOptimizer``): group
  thresholds saved beside a classifier and applied by ``AuditTarget.predict``.
"""

from probes.debias.cda import CDAFineTuner, Swapper, load_word_list
from probes.debias.projection import INLP, SentenceDebias
from probes.debias.threshold import ThresholdPostprocessor

__all__ = ["INLP", "CDAFineTuner", "SentenceDebias", "Swapper", "ThresholdPostprocessor", "load_word_list"]
