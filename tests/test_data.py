"""The digits data and its downstream tasks."""

import pytest
import torch

from lora_helpers import TASKS, load_digits_split, make_task


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
