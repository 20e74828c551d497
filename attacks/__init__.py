"""Attacks on federated learning: one module per family (``byzantine``: client-update attacks)."""
