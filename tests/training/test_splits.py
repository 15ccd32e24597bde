"""Cross-validation splits: seeded, balanced, saved once, user edits respected, errors name the fold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autounet.errors import DatasetError, PlansError
from autounet.training.splits import Split, get_fold, load_or_create_splits, make_splits

CASES = [f"case_{i:03d}" for i in range(12)]


def test_make_splits_partitions_cases_into_balanced_disjoint_folds() -> None:
    splits = make_splits(CASES, n_folds=5, seed=12345)
    assert len(splits) == 5
    assert sorted(len(s.val) for s in splits) == [2, 2, 2, 3, 3]
    all_val = [c for s in splits for c in s.val]
    assert sorted(all_val) == CASES  # every case validated exactly once
    for s in splits:
        assert sorted(s.train + s.val) == CASES
        assert not set(s.train) & set(s.val)


def test_make_splits_is_stable_and_independent_of_input_order() -> None:
    first = make_splits(CASES, seed=12345)
    again = make_splits(list(reversed(CASES)), seed=12345)
    assert first == again
    assert make_splits(CASES, seed=1) != first


def test_make_splits_refuses_fewer_cases_than_folds() -> None:
    with pytest.raises(DatasetError, match="3 training case.*5-fold"):
        make_splits(CASES[:3], n_folds=5)


def test_load_or_create_writes_once_and_is_stable_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    created = load_or_create_splits(path, CASES)
    text = path.read_text()
    reloaded = load_or_create_splits(path, CASES)
    assert reloaded == created
    assert path.read_text() == text
    assert json.loads(text)[0].keys() == {"train", "val"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_user_edited_splits_are_respected(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    custom = [{"train": CASES[2:], "val": CASES[:2]}, {"train": CASES[:10], "val": CASES[10:]}]
    path.write_text(json.dumps(custom))
    splits = load_or_create_splits(path, CASES)
    assert splits == [Split(**custom[0]), Split(**custom[1])]
    assert get_fold(splits, 1, CASES) == (CASES[:10], CASES[10:])


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ([{"train": CASES[1:], "val": ["case_999"]}], r"splits\.json: fold 0 .*case_999"),
        ([{"train": CASES[1:], "val": CASES[:1]}, {"train": CASES, "val": ["case_000"]}],
         r"splits\.json: fold 1.*case_000.*both"),
        ([{"train": CASES}], r"splits\.json: fold 0: missing required key 'val'"),
        ({"train": CASES, "val": []}, r"splits\.json: expected a non-empty list"),
        ([{"train": CASES[1:], "val": []}], r"splits\.json: fold 0: key val: is empty"),
    ],
)
def test_invalid_splits_raise_plans_error_naming_file_and_fold(tmp_path: Path, content: object, pattern: str) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PlansError, match=pattern):
        load_or_create_splits(path, CASES)


def test_fold_beyond_the_file_says_how_many_exist_and_how_to_add_one() -> None:
    splits = make_splits(CASES, n_folds=5)
    with pytest.raises(PlansError, match=r"fold 5 does not exist; the file defines 5 fold\(s\).*append"):
        get_fold(splits, 5, CASES)
    with pytest.raises(PlansError, match="fold -1 does not exist"):
        get_fold(splits, -1, CASES)


def test_fold_all_trains_and_validates_on_every_case() -> None:
    splits = make_splits(CASES, n_folds=5)
    train, val = get_fold(splits, "all", list(reversed(CASES)))
    assert train == CASES and val == CASES
    assert get_fold(splits, "2", CASES) == (splits[2].train, splits[2].val)
