"""Networks: the official networks a supplier ships and the secret networks that read scores."""

from splitsim.models import mlp  # noqa: F401
