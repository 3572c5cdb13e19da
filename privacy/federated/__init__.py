"""Federated fine-tuning with Flower (Message API): simulation on one machine, SuperLink/SuperNodes beyond it.

:class:`FederatedFineTuner` is the estimator; :mod:`~privacy.federated.partition` splits data
into clients; :mod:`~privacy.federated.client_app` and :mod:`~privacy.federated.server_app` are
the Flower apps; :mod:`~privacy.federated.runner` runs them on Flower's simulation engine or its
deployment runtime. Importing this package does not import Flower or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FederatedFineTuner", "FederationError"]


def __getattr__(name: str) -> Any:
    if name == "FederatedFineTuner":
        from privacy.federated.trainer import FederatedFineTuner

        return FederatedFineTuner
    if name == "FederationError":
        from privacy.federated.runner import FederationError

        return FederationError
    raise AttributeError(f"module 'privacy.federated' has no attribute {name!r}")
