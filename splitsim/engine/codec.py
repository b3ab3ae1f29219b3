"""Tensors to Flower records and back; only typed records cross the boundary, never pickles."""

from __future__ import annotations

import functools
import io
import math
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(
        array_dict=OrderedDict(
            (name, numpy_to_array(np.ascontiguousarray(a))) for name, a in arrays.items()
        )
    )


def numpy_to_array(array: np.ndarray) -> Array:
    """``Array.from_numpy_ndarray``, byte for byte, in one copy of the data: ``np.save`` into
    a BytesIO copies a large array three times (``tobytes`` in chunks, the BytesIO, its
    ``getvalue``), 4 ms for the 18 MB split segment, which the server and every data owner
    encode once a round. Here the header ``np.save`` would write is joined to a view of the
    array's memory; a dtype with fields or objects goes to Flower."""
    dtype = array.dtype
    if dtype.hasobject or dtype.fields is not None or not array.flags.c_contiguous:
        return Array.from_numpy_ndarray(array)
    shape = tuple(int(d) for d in array.shape)
    data = b"".join((_npy_header(dtype.str, shape), array.reshape(-1).view(np.uint8)))
    return Array(dtype=str(array.dtype), shape=shape, stype=SType.NUMPY, data=data)


def record_to_arrays(record: ArrayRecord, copy: bool = True) -> dict[str, np.ndarray]:
    """The record's arrays; with ``copy=False``, read-only views of the message's bytes where
    the header allows (see ``array_to_numpy``), for a reader that only reads them."""
    return {name: array_to_numpy(array, copy) for name, array in record.items()}


def array_to_numpy(array: Array, copy: bool = True) -> np.ndarray:
    """``Array.numpy()``, without parsing the .npy header when it is the one ``np.save`` writes
    for the array's own dtype and shape in C order: np.load reads a header with
    ``ast.literal_eval`` (0.25 ms an array, most of decoding a small network, which a node
    does for every message). The bytes after such a header are the array; any other header
    goes to np.load. ``copy=False``: a read-only view of those bytes, no copy (an 18 MB
    segment is 3 ms to copy, and a FedAvg of 100 owners reads 100 of them)."""
    dtype = _plain_dtype(array.dtype) if array.stype == SType.NUMPY else None
    if dtype is not None:
        shape = tuple(int(d) for d in array.shape)
        header = _npy_header(dtype.str, shape)
        data = array.data
        if len(data) == len(header) + dtype.itemsize * math.prod(shape) and data.startswith(header):
            view = np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
            return view.copy() if copy else view
    return array.numpy()


@functools.lru_cache(maxsize=256)
def _plain_dtype(name: str) -> np.dtype | None:
    """The dtype a record names, when it is a plain one (no fields, no objects)."""
    try:
        dtype = np.dtype(name)
    except TypeError:  # a structured dtype's name is not one np.dtype reads back
        return None
    return None if dtype.hasobject or dtype.fields is not None else dtype


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes for a C-ordered array (format 1.0, which it picks
    whenever the header fits, as for any plain dtype)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out,
        {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": shape},
    )  # fmt: skip
    return out.getvalue()


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return arrays_to_record({k: v.detach().cpu().numpy() for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in record_to_arrays(record).items()}
