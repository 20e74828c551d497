"""Attacks on federated learning: ``byzantine`` (client-update attacks) and gradient inversion."""
