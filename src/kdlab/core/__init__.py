"""Layer 2, the machine learning: data sets and their views, the batch loader, ResNets, the one training step and
loop, features and CKA, model surgery and channel pruning. Imports only kdlab.infra."""
