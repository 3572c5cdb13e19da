"""Counterfactual data augmentation (CDA) fine-tuning for sequence classifiers.

Two-sided CDA (Webster et al. 2020, "Measuring and Reducing Gendered Correlations in Pre-trained
Models"; Zmigrod et al. 2019, "Counterfactual Data Augmentation for Mitigating Gender
Stereotypes"): every training text that names a group is copied with each group word or name
replaced by its counterpart (``she`` <-> ``he``, ``Mary`` <-> ``John``), keeping its label, and
the classifier is fine-tuned on the originals plus the copies, so no group word carries
information about the label. Word lists are rai-audit's own JSON files in
``probes/debias/data/`` (``gender_terms``, ``names``) or files the user gives.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import ConfigError, DataError, NotApplicableError, NotFittedError
from audit.progress import progress
from audit.target import AuditTarget

__all__ = ["BUILTIN_WORD_LISTS", "CDAFineTuner", "Swapper", "load_word_list"]

BUILTIN_WORD_LISTS = ("gender_terms", "names")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def load_word_list(name_or_path: str | Path) -> dict[str, Any]:
    """A word list: a built-in name (``gender_terms``, ``names``) or a JSON file with ``pairs``.

    Returns ``{"name", "pairs", "fingerprint"}``; ``pairs`` is a list of ``[a, b]`` counterparts.
    """
    text: str | None = None
    if str(name_or_path) in BUILTIN_WORD_LISTS:
        name = str(name_or_path)
        text = (resources.files("probes.debias") / "data" / f"{name}.json").read_text(encoding="utf-8")
    else:
        path = Path(name_or_path).expanduser()
        name = str(path)
        if not path.is_file():
            raise DataError(f"Word list {str(name_or_path)!r} is neither a built-in list {list(BUILTIN_WORD_LISTS)} "
                            "nor an existing JSON file. Give one of those, or a file with "
                            '{"pairs": [["she", "he"], ...]}.')
        text = path.read_text(encoding="utf-8")
    try:
        pairs = json.loads(text)["pairs"]
        pairs = [[str(a).lower(), str(b).lower()] for a, b in pairs]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"Word list {name!r} is not a JSON object with 'pairs' of two words each ({type(exc).__name__}). "
                        'Write it as {"pairs": [["she", "he"], ...]}.') from None
    if not pairs:
        raise DataError(f"Word list {name!r} has no pairs. Add at least one [a, b] pair.")
    return {"name": name, "pairs": pairs, "fingerprint": "sha256:" + hashlib.sha256(text.encode()).hexdigest()}


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class Swapper:
    """Two-sided word swaps from counterpart pairs, case kept.

    A word that appears in several pairs (``his`` for ``her`` and ``hers``) maps to its first
    counterpart; ``her`` maps to ``his`` before a word and to ``him`` at the end of a clause.

    Examples
    --------
    >>> from probes.debias.cda import Swapper, load_word_list
    >>> Swapper([load_word_list("gender_terms")]).swap("She told her brother. He thanked her.")
    'He told his sister. She thanked him.'
    """

    def __init__(self, word_lists: Sequence[dict[str, Any]]) -> None:
        self.mapping: dict[str, str] = {}
        for word_list in word_lists:
            for a, b in word_list["pairs"]:
                self.mapping.setdefault(a, b)
                self.mapping.setdefault(b, a)

    def swap(self, text: str) -> str:
        out, last = [], 0
        for match in _WORD.finditer(text):
            word = match.group(0)
            key = word.lower()
            if key not in self.mapping:
                continue
            counterpart = self.mapping[key]
            if key == "her":
                following = re.match(r"\s+[A-Za-z]", text[match.end():])
                counterpart = "his" if following else "him"
            out.append(text[last:match.start()])
            out.append(_match_case(counterpart, word))
            last = match.end()
        out.append(text[last:])
        return "".join(out)


class CDAFineTuner:
    """Fine-tune a sequence classifier on its data plus two-sided counterfactual copies.

    Parameters
    ----------
    word_lists : sequence of str, default=("gender_terms", "names")
        Built-in list names or JSON files with counterpart ``pairs``.
    epochs : int, default=3
    learning_rate : float, default=2e-4
    batch_size : int, default=16
    max_length : int, default=64
    seed : int, default=0
        Seeds the shuffling and dropout.

    Attributes
    ----------
    model_ : transformers model
        The fine-tuned copy (the input model is not changed).
    n_original_, n_swapped_ : int
        Training rows before augmentation, and counterfactual copies added.
    losses_ : list of float
        Mean training loss per epoch.
    word_lists_ : list of dict
        Name and fingerprint of each word list used.
    """

    def __init__(self, *, word_lists: Sequence[str] = ("gender_terms", "names"), epochs: int = 3,
                 learning_rate: float = 2e-4, batch_size: int = 16, max_length: int = 64, seed: int = 0) -> None:
        self.word_lists = word_lists
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed

    def augment(self, texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
        """Originals plus a swapped copy of every text that changes under the swap (labels kept)."""
        lists = [load_word_list(w) for w in self.word_lists]
        if not lists:
            raise ConfigError("word_lists is empty; CDA needs at least one list of counterpart words.")
        self.word_lists_ = [{"name": w["name"], "fingerprint": w["fingerprint"], "pairs": len(w["pairs"])}
                            for w in lists]
        swapper = Swapper(lists)
        out_texts, out_labels = list(texts), [int(v) for v in labels]
        for text, label in zip(texts, labels):
            swapped = swapper.swap(text)
            if swapped != text:
                out_texts.append(swapped)
                out_labels.append(int(label))
        return out_texts, out_labels

    def fit(self, target: AuditTarget, texts: Sequence[str], labels: Sequence[Any]) -> CDAFineTuner:
        """Fine-tune a copy of ``target.model`` on ``texts`` (with labels as class indices) plus their swaps."""
        import copy

        import torch

        if target.kind != "sequence-classification":
            raise NotApplicableError(f"CDA fine-tuning here trains sequence classifiers, but {target.model_id!r} is "
                                     f"{target.kind!r}. Use sentence-debias or inlp for encoders.")
        y = np.asarray(labels).astype(int)
        if len(texts) != y.size or y.size == 0:
            raise DataError(f"texts and labels must be non-empty and of equal length, got {len(texts)} and {y.size}.")
        n_labels = target._num_labels()
        if y.min() < 0 or y.max() >= n_labels:
            raise DataError(f"labels must be class indices 0..{n_labels - 1} of {target.model_id!r}, got values "
                            f"{sorted(set(y.tolist()))[:5]}. Map the label column to the model's classes.")
        all_texts, all_labels = self.augment(texts, y)
        self.n_original_, self.n_swapped_ = len(texts), len(all_texts) - len(texts)
        if self.n_swapped_ == 0:
            raise DataError("No training text contains a word from the word lists, so CDA would add nothing. "
                            "Check the text column, or give word lists that match the data.")
        torch.manual_seed(self.seed)
        model = copy.deepcopy(target.model).to(target.device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        targets = torch.as_tensor(all_labels)
        self.losses_: list[float] = []
        n_batches = -(-len(all_texts) // self.batch_size)
        with progress(self.epochs * n_batches, desc="CDA fine-tuning", unit="batch") as bar:
            for epoch in range(self.epochs):
                order = torch.randperm(len(all_texts), generator=generator).tolist()
                total = 0.0
                for start in range(0, len(order), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    batch = target.tokenizer([all_texts[i] for i in idx], padding=True, truncation=True,
                                             max_length=self.max_length, return_tensors="pt").to(target.device)
                    out = model(**batch, labels=targets[idx].to(target.device))
                    optimizer.zero_grad()
                    out.loss.backward()
                    optimizer.step()
                    total += float(out.loss.detach()) * len(idx)
                    bar.update(1)
                self.losses_.append(total / len(order))
                bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{self.losses_[-1]:.4f}")
        model.eval()
        self.model_ = model
        return self

    def save_model(self, directory: str | Path, tokenizer: Any) -> Path:
        """Save the fine-tuned model (safetensors) and ``tokenizer`` into ``directory``."""
        if not hasattr(self, "model_"):
            raise NotFittedError("This CDAFineTuner is not fitted yet. Call fit() before save_model().")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return out
