"""Privacy tools of rai-audit: PII detection and redaction, DP-SGD, federated learning, leakage."""
