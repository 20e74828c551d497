"""The simulated world: a stack of ``Grid`` wrappers between the strategy and the runtime.

``base`` holds ``GridWrapper`` and ``Fleet``, the innermost layer that sets the nodes up.
The other layers are registered ``world_layer`` components, stacked by their declared order:
``participation`` (which clients are reachable each round), ``faults`` (crashes, stragglers,
deadlines), ``audit`` (canary clients for an empirical privacy audit) and ``clock`` (the
virtual clock, timing each exchange with the ``network`` model); the Byzantine and
eavesdropper layers register from ``fedsim.attacks``. ``topology`` builds the communication
graphs of decentralized runs. The strategy sees only what a real server would see."""
