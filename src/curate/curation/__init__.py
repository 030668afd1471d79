"""Data-quality decisions: label issues, clean actions, the removal cap, balance, augmentation, evaluation,
gates."""
