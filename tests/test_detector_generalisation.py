"""Detector options aimed at new patients (issue 14, session 8): copy-paste augmentation
(``copy_paste``) and masked-patch pretraining on unlabeled slices (``pretrain_steps``).

Behaviour on tiny data only (what training sees, determinism, resume, parameter checks),
never accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_fixtures import interrupt_fit, make_detection_data, train_dataset

from deeplesion_lab.detection.centernet import CenterNetLesion
from deeplesion_lab.detection.dataset import DatasetError
from deeplesion_lab.detection.model import ModelError
from deeplesion_lab.detection.pretrain import PATCH, mask_patches, masked_pretrain
from deeplesion_lab.detection.train import LesionDetector
from deeplesion_lab.errors import LabError

torch.set_num_threads(1)

TINY = dict(arch="centernet", width=8, image_size=96, spacing_mm=1.0, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_detection_data(tmp_path_factory.mktemp("det_gen"))


def _ds(data, copy_paste: int, augment: bool = True, crop: int | None = None, seed: int = 0):
    return train_dataset(
        data, window="soft tissue", augment=augment, crop=crop, copy_paste=copy_paste, seed=seed
    )


def _pairs(ds, ref, epochs: int):
    """``(ds[i], ref[i])`` for every item at each of the first ``epochs`` epochs."""
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        ref.set_epoch(epoch)
        for i in range(len(ds)):
            yield ds[i], ref[i]


def _real(target) -> np.ndarray:
    return target["boxes"][target["labels"] > 0].numpy()


# -- copy-paste ----------------------------------------------------------------------------------
def test_copy_paste_adds_lesions_from_other_slices_on_body(data) -> None:
    ds, ref = _ds(data, 3), _ds(data, 0)
    assert len(ds.paste_sources) == sum(int((lab > 0).sum()) for lab in ds.labels)
    added = 0
    for (img, t, _), (img0, t0, _) in _pairs(ds, ref, 4):
        assert img.shape == img0.shape == (3, 96, 96)
        real, real0 = _real(t), _real(t0)
        # the item's own lesions first, unchanged; pasted ones after them
        assert len(real) >= len(real0) and np.allclose(real[: len(real0)], real0)
        extra = real[len(real0) :]
        added += len(extra)
        changed = (img - img0).abs().sum(0) > 1e-6
        for b in extra:
            x1, y1, x2, y2 = (int(round(v)) for v in b)
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            # on body (soft-tissue window: air is 0) and away from the item's boxes
            assert img0[1, y1:y2, x1:x2].mean() > 0.1
            for o in t0["boxes"].numpy():
                assert min(b[2], o[2]) <= max(b[0], o[0]) or min(b[3], o[3]) <= max(b[1], o[1])
            # the pixels under a pasted box changed (the lesion is really there)
            assert changed[y1:y2, x1:x2].float().mean() > 0.5
        if not len(extra):
            assert torch.equal(img, img0)  # nothing pasted: the very same image
    assert added > 0


def test_copy_paste_is_drawn_from_seed_epoch_and_item(data) -> None:
    a, b = _ds(data, 2), _ds(data, 2)
    for ds in (a, b):
        ds.set_epoch(1)
    for i in range(len(a)):
        ia, ta, _ = a[i]
        ib, tb, _ = b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    other = _ds(data, 2, seed=5)
    other.set_epoch(1)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(len(a)))


def test_copy_paste_in_training_windows_and_never_in_evaluation(data) -> None:
    ds, ref = _ds(data, 3, crop=64), _ds(data, 0, crop=64)
    more = 0
    for (img, t, _), (_, t0, _) in _pairs(ds, ref, 6):
        assert img.shape == (3, 64, 64)
        assert (t["boxes"][:, 2:] <= 64).all() and (t["boxes"] >= 0).all()
        more += len(_real(t)) - len(_real(t0))
    assert more > 0
    # no augmentation (evaluation): copy_paste changes nothing
    plain, plain0 = _ds(data, 3, augment=False), _ds(data, 0, augment=False)
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], plain0[i][0])
        assert torch.equal(plain[i][1]["boxes"], plain0[i][1]["boxes"])


def test_copy_paste_bad_value_is_a_clear_error(data) -> None:
    with pytest.raises(DatasetError, match="copy_paste"):
        _ds(data, -1)
    with pytest.raises(LabError, match="copy_paste"):
        LesionDetector(**dict(TINY, epochs=1, copy_paste=-2)).fit(data.manifest)


def test_fit_with_copy_paste_resumes_identically(data, tmp_path) -> None:
    # whole 96-px images: the tiny slices leave room for pasted lesions there
    kw = dict(TINY, epochs=2, checkpoint_every=2, copy_paste=3)
    straight = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "a")
    interrupt_fit(kw, data.manifest, tmp_path / "b", at_step=3)
    resumed = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "b")
    sa, sb = straight.model_.state_dict(), resumed.model_.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    assert LesionDetector.load(tmp_path / "a").copy_paste == 3
    # the option changes what training sees, hence the weights
    plain = LesionDetector(**dict(kw, copy_paste=0)).fit(data.manifest)
    assert not torch.equal(plain.model_.state_dict()["heatmap.1.weight"], sa["heatmap.1.weight"])


# -- masked-patch pretraining ---------------------------------------------------------------------
def test_mask_patches_masks_whole_patches_at_the_ratio() -> None:
    gen = torch.Generator().manual_seed(0)
    m = mask_patches(torch.zeros(2, 3, 64, 64), 0.5, gen)
    assert m.shape == (2, 1, 64, 64)
    cells = m[:, 0, ::PATCH, ::PATCH]
    assert (cells.flatten(1).sum(1) == 8).all()  # 16 patches, half masked
    # constant inside each patch
    up = torch.nn.functional.interpolate(cells[:, None], scale_factor=PATCH, mode="nearest")
    assert torch.equal(up, m)


def _pretrain(data, model, steps=3, seed=0):
    return masked_pretrain(
        model,
        data.manifest,
        data.images_root,
        steps=steps,
        batch_size=2,
        crop=64,
        seed=seed,
        lr=1e-3,
        dataset_kwargs=dict(image_size=96, spacing_mm=1.0, window="soft tissue"),
    )


def test_masked_pretrain_trains_the_features_not_the_heads(data) -> None:
    torch.manual_seed(0)
    a = CenterNetLesion(1, width=8)
    b = CenterNetLesion(1, width=8)
    b.load_state_dict(a.state_dict())
    start = {k: v.clone() for k, v in a.state_dict().items()}
    info = _pretrain(data, a)
    assert info["steps"] == 3 and info["windows"] == 6 and info["cpu_s"] > 0
    # every split's slices are read (no label): 6 series, key slice and the offsets inside
    assert info["slices"] >= len(data.manifest.drop_duplicates("file_name"))
    sd = a.state_dict()
    assert not torch.equal(sd["stem.0.0.weight"], start["stem.0.0.weight"])
    assert not torch.equal(sd["smooth.0.weight"], start["smooth.0.weight"])
    for k in ("heatmap.1.weight", "box.1.weight", "heatmap.0.0.weight"):
        assert torch.equal(sd[k], start[k]), k
    # the same seed gives the same weights
    _pretrain(data, b)
    for k, v in b.state_dict().items():
        assert torch.equal(v, sd[k]), k
    with pytest.raises(ValueError, match="multiple of 16"):
        masked_pretrain(
            a,
            data.manifest,
            data.images_root,
            steps=1,
            batch_size=1,
            crop=40,
            seed=0,
            lr=1e-3,
            dataset_kwargs=dict(image_size=96, spacing_mm=1.0),
        )


def test_fit_pretrains_first_records_it_and_resumes_without_it(data, tmp_path) -> None:
    kw = dict(TINY, epochs=2, train_crop=64, checkpoint_every=2, pretrain_steps=2)
    straight = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "a")
    assert straight.pretrain_["steps"] == 2
    assert straight.lineage_["pretrain"]["steps"] == 2
    # no pretraining, no record; the weights differ
    plain = LesionDetector(**dict(kw, pretrain_steps=0)).fit(data.manifest)
    assert plain.pretrain_ is None and "pretrain" not in plain.lineage_
    assert not torch.equal(
        plain.model_.state_dict()["stem.0.0.weight"], straight.model_.state_dict()["stem.0.0.weight"]
    )
    # interrupted after pretraining: the resumed run takes the weights from last.pt and
    # retraces the uninterrupted one
    interrupt_fit(kw, data.manifest, tmp_path / "b", at_step=3)
    resumed = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "b")
    assert resumed.pretrain_ == {**straight.pretrain_, "cpu_s": resumed.pretrain_["cpu_s"]}
    sa, sb = straight.model_.state_dict(), resumed.model_.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    again = LesionDetector.load(tmp_path / "a")
    assert again.pretrain_steps == 2 and again.lineage_["pretrain"]["steps"] == 2


def test_pretrain_needs_the_centernet_and_a_valid_count(data) -> None:
    with pytest.raises(ModelError, match="pretrain_steps=3 needs arch 'centernet'"):
        LesionDetector(**dict(TINY, arch="fasterrcnn", epochs=1, pretrain_steps=3)).fit(
            data.manifest
        )
    with pytest.raises(LabError, match="pretrain_steps"):
        LesionDetector(**dict(TINY, epochs=1, pretrain_steps=-1)).fit(data.manifest)


def test_options_off_keep_the_fingerprint_of_older_checkpoints() -> None:
    det = LesionDetector(**TINY)
    params = det._fingerprint({})["params"]
    assert "copy_paste" not in params and "pretrain_steps" not in params
    on = LesionDetector(**dict(TINY, copy_paste=1, pretrain_steps=4))._fingerprint({})["params"]
    assert on["copy_paste"] == 1 and on["pretrain_steps"] == 4


# -- pasted lesions' own scale (session 10) ------------------------------------------------------
def _pasted_sizes(ds, ref, epochs: int = 6) -> np.ndarray:
    sides = []
    for (_, t, _), (_, t0, _) in _pairs(ds, ref, epochs):
        extra = _real(t)[len(_real(t0)) :]
        sides += list(np.sqrt((extra[:, 2] - extra[:, 0]) * (extra[:, 3] - extra[:, 1])))
    return np.asarray(sides)


def test_paste_scale_range_rescales_the_pasted_lesions_only(data) -> None:
    ref = _ds(data, 0)
    narrow = train_dataset(data, window="soft tissue", augment=True, copy_paste=3,
                           paste_scale_range=(1.0, 1.0))
    small = train_dataset(data, window="soft tissue", augment=True, copy_paste=3,
                          paste_scale_range=(0.5, 0.5))
    a, b = _pasted_sizes(narrow, ref), _pasted_sizes(small, ref)
    assert len(a) and len(b)
    # half the scale: pasted boxes about half the side (the lesions' own sizes vary)
    assert 0.35 < np.median(b) / np.median(a) < 0.65
    # the item's own lesions keep their boxes
    for (_, t, _), (_, t0, _) in _pairs(small, ref, 2):
        assert np.allclose(_real(t)[: len(_real(t0))], _real(t0))


def test_paste_scale_range_bad_value_and_fingerprint(data) -> None:
    with pytest.raises(DatasetError, match="paste_scale_range"):
        train_dataset(data, window="soft tissue", augment=True, copy_paste=1,
                      paste_scale_range=(2.0, 1.0))
    assert "paste_scale_range" not in LesionDetector(**TINY)._fingerprint({})["params"]
    on = LesionDetector(**dict(TINY, paste_scale_range=(0.5, 2.0)))._fingerprint({})["params"]
    assert on["paste_scale_range"] == [0.5, 2.0]


def test_fit_with_paste_scale_range_saves_it(data, tmp_path) -> None:
    det = LesionDetector(**dict(TINY, epochs=1, copy_paste=2, paste_scale_range=(0.5, 2.0)))
    det.fit(data.manifest, checkpoint_dir=tmp_path / "p")
    assert LesionDetector.load(tmp_path / "p").paste_scale_range == (0.5, 2.0)


# -- pasted lesions without their class (session 11) ---------------------------------------------
@pytest.mark.parametrize("crop", [None, 64])
def test_paste_classes_off_marks_the_pasted_lesions_only(data, crop) -> None:
    ref = _ds(data, 0, crop=crop)
    off = train_dataset(data, window="soft tissue", augment=True, crop=crop, copy_paste=3,
                        paste_classes=False)
    on = _ds(data, 3, crop=crop)
    pasted = 0
    for (_, t, _), (_, t0, _) in _pairs(off, ref, 4):
        w = t["class_weight"]
        assert w.shape == t["labels"].shape
        n_own = len(t0["labels"])  # the slice's own boxes (lesions and ignore regions) first
        assert torch.equal(t["labels"][:n_own], t0["labels"])
        assert (w[:n_own] == 1).all() and (w[n_own:] == 0).all()
        pasted += len(w) - n_own
    assert pasted > 0
    # on (the default) and without augmentation: no class weights, the very same targets
    for (_, t, _), (_, t1, _) in _pairs(on, off, 2):
        assert "class_weight" not in t and torch.equal(t["boxes"], t1["boxes"])
    plain = train_dataset(data, window="soft tissue", augment=False, crop=crop, copy_paste=3,
                          paste_classes=False)
    assert "class_weight" not in plain[0][1]


def test_zero_class_weight_leaves_the_lesion_out_of_the_class_loss_only() -> None:
    images = [torch.rand(3, 64, 64)]
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]])
    both = [{"boxes": boxes, "labels": torch.tensor([2, 3])}]
    first = [{"boxes": boxes[:1], "labels": torch.tensor([2])}]
    weighted = [{**both[0], "class_weight": torch.tensor([1.0, 0.0])}]
    torch.manual_seed(0)
    m = CenterNetLesion(3, width=8)
    m.train()
    out = {k: m(images, t) for k, t in (("both", both), ("first", first), ("w", weighted))}
    # the class loss is the first lesion's alone; heatmap and box losses still see both
    torch.testing.assert_close(out["w"]["loss_classes"], out["first"]["loss_classes"])
    assert not torch.isclose(out["both"]["loss_classes"], out["first"]["loss_classes"])
    for k in ("loss_heatmap", "loss_box"):
        torch.testing.assert_close(out["w"][k], out["both"][k])
    none = m(images, [{**both[0], "class_weight": torch.zeros(2)}])
    assert none["loss_classes"] == 0


def test_fit_with_paste_classes_off_saves_it_and_keeps_old_fingerprints(data, tmp_path) -> None:
    from detector_fixtures import true_types

    assert "paste_classes" not in LesionDetector(**TINY)._fingerprint({})["params"]
    det = LesionDetector(**dict(TINY, epochs=1, copy_paste=2, paste_classes=False))
    det.fit(data.manifest, true_types(data.manifest), checkpoint_dir=tmp_path / "p")
    back = LesionDetector.load(tmp_path / "p")
    assert back.paste_classes is False and len(back.classes_) > 1
    assert det._fingerprint({})["params"]["paste_classes"] is False
    with pytest.raises(LabError, match="paste_classes"):
        LesionDetector(**dict(TINY, epochs=1, paste_classes="no")).fit(data.manifest)
