"""Training: robust encoder (PGD on a proxy task) and the autoencoder that inverts it."""
