"""splitsim: split and federated learning with malicious parties, simulated over Flower."""

__version__ = "0.1.0"
