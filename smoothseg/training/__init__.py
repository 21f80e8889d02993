"""Training: losses, data loading and augmentation, the trainer, checkpoints and progress logging.

``smoothseg.training.losses`` holds the loss modules (Dice + cross-entropy, the VAE term, the
knowledge-informed TLVR term and their weighted sum).
"""
