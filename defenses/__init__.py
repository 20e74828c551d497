"""Privacy defenses: client mods and server wrappers (dp), and defenses that change the
protocol itself, registered as strategies (sgm, diff2, hyperfl)."""

from fedsim.defenses import diff2, dp, hyperfl, sgm  # noqa: F401
