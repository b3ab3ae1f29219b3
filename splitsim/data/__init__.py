"""Datasets: the Covid app's synthetic health records; MNIST, Fashion-MNIST, CIFAR-10."""

from splitsim.data import health_records, images, mnist  # noqa: F401
