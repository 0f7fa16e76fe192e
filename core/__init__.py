"""t2t-edge: lite T2T-ViT and MobileNet baselines, from checkpoint to edge runtime."""

__version__ = "0.1.0"
