"""Privacy defenses: client mods and server wrappers, and protocol-changing defenses."""
