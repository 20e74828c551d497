"""Privacy defenses: client mods and server wrappers, and protocol-changing defenses."""
from defenses import hyperfl  # noqa: F401  (registers model hyperfl, hyperfl_target, strategy hyperfl)
