"""The Flower apps of a run. ``client`` is the one generic ClientApp every node runs (it
holds the client's partition and dispatches to the strategy's client-side handler and the
defense's mods); ``server`` is the ServerApp of a federated run (the round loop that drives a
strategy through the world's grid, and ``execute``, which every runtime launches);
``decentralized`` is the ServerApp that plays the network for DFedSAM, D-PSGD and MoDeST;
``setup`` builds what the server side knows before round 1 (dataset, partitions, initial
model)."""
