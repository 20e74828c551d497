"""Privacy defenses: client mods and server wrappers, and protocol-changing defenses."""

from defenses import sgm  # noqa: F401
