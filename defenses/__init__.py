"""Privacy defenses: client mods and server wrappers, and protocol-changing defenses."""

from defenses import diff2  # noqa: F401
