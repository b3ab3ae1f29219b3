"""The paper's task family: relabelling, re-weighting, names, and impossible splits."""

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.data import tasks

LABELS = np.arange(10)


def test_relabel_matches_the_paper():
    assert tasks.relabel("C10", LABELS).tolist() == list(range(10))
    assert tasks.relabel("C2", LABELS).tolist() == [0] * 5 + [1] * 5
    # C5 pairs (0, 5), (1, 6), ...: no pair lies inside one C2 class
    c5 = tasks.relabel("C5", LABELS)
    assert c5.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert all(len(set(tasks.relabel("C2", LABELS)[c5 == k])) == 2 for k in range(5))
    assert tasks.relabel("F3", LABELS).tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]
    assert tasks.relabel("L2", LABELS).tolist() == [2] * 8 + [0, 1]
    for name in ("C2", "C5", "C10", "F1", "F9", "L1", "L9"):
        assert tasks.relabel(name, LABELS).max() + 1 == tasks.num_classes(name)


def test_fn_ln_loss_reweighting():
    w = tasks.loss_weights("F2", LABELS, "named")
    assert np.allclose(w, [1 / 8, 1 / 8] + [1.0] * 8)
    w = tasks.loss_weights("L8", LABELS, "extra")
    assert np.allclose(w, [0.5, 0.5] + [1.0] * 8)
    assert np.allclose(tasks.loss_weights("C5", LABELS), 1.0)
    assert np.allclose(tasks.loss_weights("F2", LABELS, "none"), 1.0)


def test_class_names():
    names = tuple(str(i) for i in range(10))
    assert tasks.class_names("F2", names) == ("0", "1", "other")
    assert tasks.class_names("C5", names)[0] == "0 or 5"


@pytest.mark.parametrize("bad", ["F10", "L0", "C3"])
def test_impossible_split_is_one_line_and_exit_2(bad, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        "dataset: {name: fashion_mnist}\n"
        f"tasks: {{official: {bad}, secret: C10}}\n"
        "role: {name: hidden_learning}\n"
        "models: {official: {name: lenet}}\n"
    )
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {path}: tasks.official: '{bad}' is not a task; "
        f"allowed: C2, C5, C10, F1..F9, L1..L9 (got '{bad}')"
    ]
    assert not (tmp_path / "r").exists()


def test_image_dataset_needs_tasks_and_covid_refuses_them(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("dataset: {name: fashion_mnist}\nrole: {name: hidden_learning}\n")
    assert main(["run", str(path)]) == 2
    assert "tasks: fashion_mnist needs tasks" in capsys.readouterr().err
    path.write_text(
        "dataset: {name: covid_health_records}\nrole: {name: hidden_learning}\n"
        "tasks: {official: C2, secret: C10}\n"
    )
    assert main(["run", str(path)]) == 2
    assert "tasks: covid_health_records has fixed tasks" in capsys.readouterr().err


def test_missing_dataset_files(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"dataset: {{name: cifar10, root: {tmp_path / 'nowhere'}}}\n"
        "tasks: {official: C2, secret: C10}\nrole: {name: hidden_learning}\n"
        "models: {official: {name: lenet}}\n"
    )
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "dataset.root: CIFAR-10 not found in" in err and "dataset.download: true" in err
    assert not (tmp_path / "r").exists()
