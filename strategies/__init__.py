"""Built-in strategies: one module per algorithm; importing this package registers them."""

from strategies import dfedsam, dpsgd, fedavg, fedprox, modest  # noqa: F401
