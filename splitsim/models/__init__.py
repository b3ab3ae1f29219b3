"""Networks: the official networks a supplier ships and the secret networks that read scores."""

from splitsim.models import lenet, mlp  # noqa: F401
