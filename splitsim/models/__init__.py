"""Networks: hidden learning's official and secret networks; the split classifier and decoder."""

from splitsim.models import lenet, mlp, probe_cnn, split_cnn  # noqa: F401
