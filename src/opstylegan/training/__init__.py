"""Training: the loop, losses, ADA augmentation, generator EMA, data loading and distributed helpers."""
