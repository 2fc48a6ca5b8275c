"""The pipeline's fine-tuning step asks for a new class head exactly when the corrected labels
of the training lesions name other classes than the pseudo-label detector knows."""

from __future__ import annotations

import pandas as pd
import pytest
from factory import write_dl_info
from label_fixtures import make_pseudo, make_run

from deeplesion_lab.detection.train import select_split
from deeplesion_lab.labels import LabelStore
from deeplesion_lab.manifest import read_manifest, write_manifest
from deeplesion_lab.pipeline import _new_classes
from deeplesion_lab.steps.labels import init_label_store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def run(real_dir, tmp_path):
    """A run over the Kaggle subset's train and val lesions whose pseudo-labels give "bone"
    to one val lesion only, so the training split's classes have no bone."""
    raw = pd.read_csv(real_dir / "DL_info_kaggle_subset.csv", dtype=str, keep_default_na=False)
    raw = raw[raw["Train_Val_Test"].str.strip().isin(["1", "2"])].head(200)
    write_dl_info(raw, tmp_path / "DL_info.csv")
    write_manifest(tmp_path / "DL_info.csv", tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    pseudo = make_pseudo(m)
    train = set(select_split(m, "train")["lesion_id"].astype(str))
    is_train = pseudo["lesion_id"].isin(train)
    assert is_train.any() and (~is_train).any()
    pseudo["label"] = ["lung" if i % 2 else "liver" for i in range(len(pseudo))]
    pseudo.loc[pseudo.index[~is_train][0], "label"] = "bone"
    r = make_run(tmp_path / "run", tmp_path / "m.parquet", pseudo)
    init_label_store(r, say=lambda _: None)
    return r, sorted(train), pseudo


def test_a_type_only_val_lesions_have_is_not_a_new_class(run):
    r, _, _ = run
    assert _new_classes(r) is False


def test_a_correction_to_a_type_the_detector_lacks_asks_for_a_new_head(run):
    r, train, _ = run
    with LabelStore.open(r.label_db) as store:
        store.relabel([train[0]], "bone", "alice")
    assert _new_classes(r) is True


def test_a_class_no_training_lesion_keeps_asks_for_a_new_head(run):
    r, train, pseudo = run
    liver = pseudo.loc[pseudo["lesion_id"].isin(train) & (pseudo["label"] == "liver"), "lesion_id"]
    with LabelStore.open(r.label_db) as store:
        store.relabel(list(liver), "lung", "alice")
    assert _new_classes(r) is True


def test_not_a_lesion_is_no_class(run):
    r, train, _ = run
    with LabelStore.open(r.label_db) as store:
        store.relabel([train[0]], "not a lesion", "alice")
    assert _new_classes(r) is False
