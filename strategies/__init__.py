"""Built-in strategies: one module per algorithm; importing this package registers them."""

from fedsim.strategies import (  # noqa: F401
    dfedsam,
    dpsgd,
    fedasync,
    fedau,
    fedavg,
    fedavg_updates,
    fedbuff,
    feddyn,
    fednga,
    fedprox,
    fedsgd,
    fedsam,
    fedspeed,
    fedvarp,
    known_prob,
    mifa,
    modest,
    robust,
    scaffold,
    sync_fedavg,
)
