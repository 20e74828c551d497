"""Attacks: Byzantine client attacks and gradient-inversion attacks (see README)."""
