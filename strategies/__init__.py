"""Built-in strategies: one module per algorithm; importing this package registers them."""

from strategies import fedavg, fedprox, fedsgd  # noqa: F401
