"""Flower plumbing: tensors <-> records, the wire log, and run_simulation on Ray."""
