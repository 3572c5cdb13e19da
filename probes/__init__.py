"""Built-in probes of rai-audit, registered through the ``rai_audit.probes`` entry-point group."""
