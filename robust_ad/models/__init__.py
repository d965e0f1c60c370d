"""Models: robust encoder, mirror decoder, patch discriminator."""
