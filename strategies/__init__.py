"""Built-in strategies: one module per algorithm; importing this package registers them."""

from strategies import fedau, fedavg, fedavg_updates, fedprox, fedvarp, known_prob, mifa  # noqa: F401
