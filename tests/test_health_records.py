"""The generator's promise: secrets recoverable from the record, not implied by official labels."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from splitsim.data.health_records import CovidHealthRecords, generate, region_one_hot
from splitsim.data.score_data import partition_sizes


def test_same_seed_same_users_and_partitions_regenerate():
    a, b = generate(500, 7), generate(500, 7)
    assert all(np.array_equal(a.raw[k], b.raw[k]) for k in a.raw)
    assert not np.array_equal(generate(500, 8).raw["age"], a.raw["age"])
    ds = CovidHealthRecords(CovidHealthRecords.Params(), seed=3)
    p1, p2 = ds.partition(2, 5, 1003), ds.partition(2, 5, 1003)
    assert np.array_equal(p1.x, p2.x) and len(p1) == partition_sizes(1003, 5)[2] == 201
    assert sum(partition_sizes(1003, 5)) == 1003


def test_label_rates_are_plausible():
    d = generate(20_000, 0)
    severe, infected = d.official.mean(axis=0)
    assert 0.1 < severe < 0.35 and 0.1 < infected < 0.35
    for name, labels in d.secrets.items():
        shares = np.bincount(labels) / len(labels)
        assert shares.min() > 0.1, (name, shares)


def test_secret_is_in_the_record_but_not_in_the_official_labels():
    train, test = generate(8000, 1), generate(4000, 2)
    y_train, y_test = train.secrets["cv_risk"], test.secrets["cv_risk"]
    from_record = MLPClassifier((32,), max_iter=300, random_state=0).fit(train.features(), y_train)
    acc_record = from_record.score(test.features(), y_test)

    def official_view(d):
        return np.concatenate([d.official.astype(np.float32), region_one_hot(d.region)], axis=1)

    from_labels = LogisticRegression(max_iter=500).fit(official_view(train), y_train)
    acc_labels = from_labels.score(official_view(test), y_test)
    assert acc_record > 0.9
    assert acc_record - acc_labels > 0.25, (acc_record, acc_labels)
