"""Built-in strategies: one module per algorithm; importing this package registers them."""

from strategies import fedavg, feddyn, fedprox, fedsam, fedspeed, scaffold  # noqa: F401
