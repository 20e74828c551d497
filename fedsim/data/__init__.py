"""Data: the registered datasets (``datasets``: digits, synthetic LEAF, MNIST/CIFAR-10 files,
Hugging Face via flwr-datasets; ``images``: small natural-image sets for inversion attacks)
and the partitioners that split a training set across clients (``partition``)."""
