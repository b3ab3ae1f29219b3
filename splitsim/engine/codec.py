"""Tensors to Flower records and back; only typed records cross the boundary, never pickles."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(
        array_dict=OrderedDict(
            (name, Array.from_numpy_ndarray(np.ascontiguousarray(a))) for name, a in arrays.items()
        )
    )


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return arrays_to_record({k: v.detach().cpu().numpy() for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in record_to_arrays(record).items()}
