"""Datasets: the Covid app's synthetic health records; Fashion-MNIST and CIFAR-10 images."""

from splitsim.data import health_records, images  # noqa: F401
