"""Runtimes: where the ServerApp and the ClientApps run. Each is a Flower ``Grid``.

``inprocess`` calls the ClientApp directly in this process (``batched``: a round's cohort as
one stacked torch.func computation); ``ray`` runs it on long-lived Ray worker actors that
each train a share of the cohort (or through Flower's Simulation Engine); ``deployment``
submits fedsim's Flower app (``flwr_app/``) to a real SuperLink and its SuperNodes, which
``cluster`` starts on this host (or writes a Docker compose file for) with TLS and node
authentication from ``certs``."""
