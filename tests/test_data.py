"""The digits data and its downstream tasks."""

import pytest
import torch

from lora_helpers import TASKS, few_label_split, load_digits_split, make_task


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def test_shapes_dtypes_and_ranges(split):
    assert split.x_train.shape == (1347, 8, 8) and split.x_test.shape == (450, 8, 8)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.x_train.min() == 0 and split.x_train.max() == 1
    assert set(split.y_test.tolist()) == set(range(10))


def test_split_is_deterministic_stratified_and_disjoint(split):
    again = load_digits_split()
    assert all(torch.equal(a, b) for a, b in zip(split, again))
    other = load_digits_split(seed=1)
    assert not torch.equal(split.y_test, other.y_test)
    train_share = torch.bincount(split.y_train, minlength=10) / len(split.y_train)
    test_share = torch.bincount(split.y_test, minlength=10) / len(split.y_test)
    assert (train_share - test_share).abs().max() < 0.01
    flat_train = {tuple(x.flatten().tolist()) for x in split.x_train}
    overlap = sum(tuple(x.flatten().tolist()) in flat_train for x in split.x_test)
    assert overlap < 5  # only exact duplicate images in the raw data can appear in both


@pytest.mark.parametrize("name,transform", [
    ("original", lambda x: x),
    ("rotated", lambda x: torch.rot90(x, 1, (1, 2))),
    ("flipped", lambda x: x.flip(2)),
    ("inverted", lambda x: 1 - x),
    ("transposed", lambda x: x.transpose(1, 2)),
])
def test_tasks_transform_images_and_keep_labels(split, name, transform):
    task = make_task(split, name)
    assert torch.equal(task.x_train, transform(split.x_train))
    assert torch.equal(task.x_test, transform(split.x_test))
    assert torch.equal(task.y_train, split.y_train) and torch.equal(task.y_test, split.y_test)
    assert name in TASKS


def test_shifted_tasks_differ_from_the_original(split):
    for name in TASKS[1:]:
        assert not torch.equal(make_task(split, name).x_test, split.x_test), name


def test_bad_arguments(split):
    with pytest.raises(ValueError, match=r"unknown task 'upside_down'; choose one of \('original'"):
        make_task(split, "upside_down")
    with pytest.raises(ValueError, match="unknown task"):
        make_task(split, ["rotated"])
    for bad in (1.5, "0.2"):
        with pytest.raises(ValueError, match="test_size must be in"):
            load_digits_split(test_size=bad)


def test_few_label_split_partitions_the_training_images(split):
    task = few_label_split(make_task(split, "rotated"), per_class=30, seed=3)
    assert task.y_train.bincount().tolist() == [30] * 10
    assert len(task.y_train) + len(task.y_val) == len(split.y_train)          # nothing lost
    assert len(task.y_val) > 1_000 and set(task.y_val.tolist()) == set(range(10))
    # no image is both a training and a validation image (rows compared as flattened pixels)
    train_rows = {tuple(row) for row in task.x_train.flatten(1).tolist()}
    duplicates_in_data = len(split.x_train) - len({tuple(r) for r in split.x_train.flatten(1).tolist()})
    overlap = sum(tuple(row) in train_rows for row in task.x_val.flatten(1).tolist())
    assert overlap <= duplicates_in_data
    assert torch.equal(task.x_test, make_task(split, "rotated").x_test)       # test untouched
    again = few_label_split(make_task(split, "rotated"), per_class=30, seed=3)
    assert torch.equal(again.x_train, task.x_train)                           # seeded
    other = few_label_split(make_task(split, "rotated"), per_class=30, seed=4)
    assert not torch.equal(other.x_train, task.x_train)


@pytest.mark.parametrize("per_class, error", [(0, ValueError), (2.5, TypeError), (10_000, ValueError)])
def test_few_label_split_refuses_bad_counts(split, per_class, error):
    with pytest.raises(error, match="per_class"):
        few_label_split(split, per_class=per_class)
