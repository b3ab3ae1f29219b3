"""Cache entries computed once: processes (here threads, each with its own open lock file, which
flock treats as another holder) that miss the same entry at once wait for the first to write
it, then read it."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from splitsim import reference_classifier as rc
from splitsim.cache_lock import computing


def test_two_callers_that_miss_the_reference_classifier_train_it_once(tmp_path, monkeypatch):
    trained = []
    real = rc._train

    def slow_train(*args, **kwargs):
        trained.append(threading.get_ident())
        time.sleep(0.5)  # the other caller arrives while this one trains
        real(*args, **kwargs)

    monkeypatch.setattr(rc, "_train", slow_train)
    rng = np.random.default_rng(0)
    x = rng.random((128, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    models: list[torch.nn.Module] = []
    callers = [
        threading.Thread(target=lambda: models.append(rc.reference_classifier(x, y, tmp_path, 0)))
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(trained) == 1 and len(models) == 2
    first, second = (m.state_dict() for m in models)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_lock_is_held_for_the_block_only(tmp_path):
    path = tmp_path / "splitsim-cache" / "entry.npz"
    order = []

    def second() -> None:
        with computing(path):
            order.append("second")

    with computing(path):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.3)
        order.append("first")
    waiting.join(timeout=10)
    assert order == ["first", "second"]
