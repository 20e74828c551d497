"""Runtimes: where the ServerApp and the ClientApps run. Each is a Flower ``Grid``:
``inprocess`` calls the ClientApp directly in this process; ``ray`` runs it on Ray through
Flower's Simulation Engine; ``deployment`` submits fedsim's Flower app (``flwr_app/``) to a
real SuperLink and its SuperNodes, which ``cluster`` starts on this host (or writes a
Docker compose file for) with TLS and node authentication from ``certs``."""
