"""Models and their training: networks, backbones, batches from the stores, the fit loop, K-fold training."""
