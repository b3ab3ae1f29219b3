"""Networks: hidden learning's official and secret networks; the split classifier and decoder;
the probed CNN; the federated feature MLP."""

from splitsim.models import dlg_cnn, feature_mlp, lenet, mlp, probe_cnn, split_cnn  # noqa: F401
