"""Datasets: the Covid app's synthetic health records (more to come: MNIST, Fashion-MNIST)."""

from splitsim.data import health_records  # noqa: F401
