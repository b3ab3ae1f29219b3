"""engine/codec.py decodes every array exactly as Flower's ``Array.numpy()`` does, taking its
shortcut only past the header ``np.save`` writes for that dtype and shape."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from splitsim.engine.codec import (
    array_to_numpy,
    arrays_to_record,
    numpy_to_array,
    record_to_arrays,
)

ARRAYS = {
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "scalar": np.array(2.5),
    "empty": np.zeros((0, 5), dtype=np.int64),
    "bool": np.array([True, False, True]),
    "big-endian": np.arange(6, dtype=">f8").reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    "strings": np.array(["ab", "c"]),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_an_array_decodes_as_flower_decodes_it(name):
    array = Array.from_numpy_ndarray(ARRAYS[name])  # Flower's own encoding, in any order
    ours, flowers = array_to_numpy(array), array.numpy()
    assert ours.dtype == flowers.dtype and ours.shape == flowers.shape
    assert ours.tobytes() == flowers.tobytes()
    assert ours.flags.writeable == flowers.flags.writeable


def test_a_header_that_disagrees_with_the_record_goes_to_numpy():
    array = Array.from_numpy_ndarray(np.arange(6, dtype=np.float32))
    array.shape = (2, 3)  # the record says 2 x 3, the bytes' own header 6
    assert array_to_numpy(array).shape == (6,) == array.numpy().shape


def test_a_record_round_trips():
    arrays = {k: v for k, v in ARRAYS.items() if k != "scalar"}  # np.ascontiguousarray: 1-d
    back = record_to_arrays(arrays_to_record(arrays))
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert np.array_equal(back[name], value), name


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_an_array_encodes_byte_for_byte_as_flower_encodes_it(name):
    # What crosses the boundary must not change with the one-copy encoder: the same Array
    # fields and the same bytes as Flower's own np.save path, in any layout or dtype.
    for value in (ARRAYS[name], np.ascontiguousarray(ARRAYS[name])):
        ours, flowers = numpy_to_array(value), Array.from_numpy_ndarray(value)
        assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
        assert type(ours.data) is bytes and ours.data == flowers.data


def test_a_view_decodes_the_same_values_and_cannot_be_written():
    value = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    array = Array.from_numpy_ndarray(value)
    view = array_to_numpy(array, copy=False)
    assert np.array_equal(view, value) and view.dtype == value.dtype
    assert not view.flags.writeable  # a reader that writes fails loudly, not silently
    assert array_to_numpy(array).flags.writeable
    back = record_to_arrays(arrays_to_record({"w": value}), copy=False)
    assert np.array_equal(back["w"], value)
