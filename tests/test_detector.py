"""The detector: network pieces, dataset, labels, training loop, checkpoints, resume, lineage.

Real torchvision models on tiny images (64 px, a few steps); the data are the 16-bit PNG
series of ``detector_fixtures`` (known layout).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from detector_fixtures import interrupt_fit, make_detection_data, true_types

from deeplesion_lab.detection.dataset import (
    DatasetError,
    KeySliceDataset,
    mined_ignore_boxes,
    neighbour_ignore_boxes,
)
from deeplesion_lab.detection.froc import PREDICTION_COLUMNS
from deeplesion_lab.detection.labels_table import (
    LabelsError,
    apply_class_map,
    class_indices,
    parse_class_map,
    read_labels_table,
)
from deeplesion_lab.detection.model import (
    LesionRoIHeads,
    ModelError,
    build_detector,
    load_backbone_weights,
)
from deeplesion_lab.detection.train import CheckpointError, LesionDetector

torch.set_num_threads(1)  # 2 threads on a shared 2-core machine oversubscribe badly

TINY = dict(image_size=64, spacing_mm=1.5, box_head_size=64, batch_size=2, progress=False,
            anchor_sizes=(8, 16, 32, 64, 128))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_detection_data(tmp_path_factory.mktemp("det"))


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    """A 1-epoch multi-class detector with a checkpoint folder."""
    folder = tmp_path_factory.mktemp("ck") / "multi"
    det = LesionDetector(epochs=1, **TINY)
    det.fit(data.manifest, true_types(data.manifest), checkpoint_dir=folder,
            lineage={"labels_source": "truth", "label_snapshot_id": 7})
    return det, folder


# ---------------------------------------------------------------------------------------------
# network


def test_build_detector_and_errors() -> None:
    m = build_detector(3, image_size=64, box_head_size=32)
    assert m.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert m.transform.min_size == (64,) and m.transform.max_size == 64
    m.eval()
    with torch.no_grad():
        out = m([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
    # lesions are small: the finest MobileNet level has stride 8 (torchvision's default: 32)
    with torch.no_grad():
        feats = m.backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert m.rpn.anchor_generator.num_anchors_per_location() == [6] * 4
    assert m.rpn.anchor_generator.sizes[0] == (16, 23)
    r = build_detector(1, backbone="resnet18_fpn", image_size=64, box_head_size=32)
    assert r.rpn.anchor_generator.num_anchors_per_location() == [6] * 5
    with pytest.raises(ModelError, match="needs 5 anchor sizes"):
        build_detector(1, backbone="resnet18_fpn", anchor_sizes=(16, 32))
    with pytest.raises(ModelError, match="unknown backbone"):
        build_detector(1, backbone="vgg16")
    with pytest.raises(ModelError, match="at least one"):
        build_detector(0)


def test_proposal_settings_reach_the_network() -> None:
    det = LesionDetector(test_proposals=500, rpn_fg_iou=0.5, image_size=64, box_head_size=32)
    m = det._build(1)
    assert m.rpn._post_nms_top_n["testing"] == 500 and m.rpn._pre_nms_top_n["testing"] == 500
    assert m.rpn._post_nms_top_n["training"] == 300
    assert m.rpn.proposal_matcher.high_threshold == 0.5
    assert m.rpn.proposal_matcher.low_threshold == 0.3
    default = LesionDetector(image_size=64, box_head_size=32)._build(1)
    assert default.rpn._post_nms_top_n["testing"] == 150
    assert default.rpn.proposal_matcher.high_threshold == 0.7


def test_class_agnostic_lesion_score() -> None:
    m = build_detector(3, image_size=64, box_head_size=32, box_score_thresh=0.0,
                       box_nms_thresh=0.5)
    heads: LesionRoIHeads = m.roi_heads
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 50.0, 50.0]])]
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0], [0.0, 0.2, 0.1, 3.0]])  # bg, c1, c2, c3
    regression = torch.zeros(2, 4 * 4)  # no offsets: each class's box is the proposal
    boxes, scores, labels = heads.postprocess_detections(logits, regression, proposals,
                                                         [(64, 64)])
    p = torch.softmax(logits, -1)
    order = torch.argsort(1 - p[:, 0], descending=True)
    assert torch.allclose(scores[0], (1 - p[:, 0])[order])  # lesion score = 1 - p(background)
    assert labels[0].tolist() == [3, 1]  # the most likely lesion class
    assert torch.allclose(boxes[0], proposals[0][order])


def test_ignore_regions_are_neither_positives_nor_negatives() -> None:
    m = build_detector(1, image_size=64, box_head_size=32, ignore_iou=0.3)
    lesion = torch.tensor([10.0, 10.0, 30.0, 30.0])
    unannotated = torch.tensor([40.0, 40.0, 60.0, 60.0])
    with_ignore = {"boxes": torch.stack([lesion, unannotated]), "labels": torch.tensor([1, -1])}
    without = {"boxes": lesion[None], "labels": torch.tensor([1])}
    # box head: proposals on the lesion, on the unannotated lesion, and elsewhere
    props = [torch.tensor([[11.0, 10.0, 30.0, 31.0], [41.0, 40.0, 61.0, 60.0],
                           [0.0, 40.0, 15.0, 60.0]])]
    heads = m.roi_heads
    idx, lab = heads.assign_targets_to_proposals(props, [with_ignore["boxes"]],
                                                 [with_ignore["labels"]])
    assert lab[0].tolist() == [1, -1, 0]
    assert idx[0][0].item() == 0  # the positive regresses to the lesion box
    _, lab = heads.assign_targets_to_proposals(props, [without["boxes"]], [without["labels"]])
    assert lab[0].tolist() == [1, 0, 0]  # without the strategy: a hard negative
    # RPN: anchors covering the unannotated lesion are dropped from the objectness loss
    anchors = [props[0]]
    lab_i, _ = m.rpn.assign_targets_to_anchors(anchors, [with_ignore])
    lab_n, _ = m.rpn.assign_targets_to_anchors(anchors, [without])
    assert lab_i[0].tolist() == [1.0, -1.0, 0.0]
    assert lab_n[0].tolist() == [1.0, 0.0, 0.0]
    # only ignore regions on an image: no positive, the ignore region is not a negative
    only = {"boxes": unannotated[None], "labels": torch.tensor([-1])}
    _, lab = heads.assign_targets_to_proposals(props, [only["boxes"]], [only["labels"]])
    assert lab[0].tolist() == [0, -1, 0]


def test_backbone_weights_from_a_local_file(tmp_path) -> None:
    from torchvision.models import mobilenet_v3_large

    net = mobilenet_v3_large(weights=None)
    torch.nn.init.constant_(net.features[0][0].weight, 0.125)
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(net.state_dict(), path)
    m = build_detector(1, image_size=64, box_head_size=32, backbone_weights=path)
    assert torch.all(m.backbone.body["0"][0].weight == 0.125)
    # frozen batch norm for a pretrained backbone, as torchvision does
    assert type(m.backbone.body["0"][1]).__name__ == "FrozenBatchNorm2d"
    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ModelError, match="match by name and shape"):
        load_backbone_weights(m, bad)
    with pytest.raises(ModelError, match="not found"):
        build_detector(1, backbone_weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ModelError, match="not a readable"):
        build_detector(1, backbone_weights=tmp_path / "junk.pth")


# ---------------------------------------------------------------------------------------------
# dataset


def test_dataset_items(data) -> None:
    m = data.manifest
    train = m[m["split"] == 1]
    ds = KeySliceDataset(train, data.images_root, context=m, image_size=64, spacing_mm=1.5)
    assert len(ds) == 5  # series 2 has two lesions on one key slice
    img, target, meta = ds[ds.file_names.index("000002_01_01_003.png")]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    assert meta["scale"] == pytest.approx(1.0 / 1.5)
    rows = train[train["file_name"] == "000002_01_01_003.png"]
    expect = rows[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].to_numpy() / 1.5
    got = target["boxes"].numpy().astype(np.float64)
    assert np.allclose(got[np.lexsort(got.T[::-1])], expect[np.lexsort(expect.T[::-1])],
                       atol=1e-3)
    assert target["labels"].tolist() == [1, 1]
    # the windowed lesion is brighter than the body around it ("wide" window: 300 HU vs 40)
    b = target["boxes"][0].round().int().tolist()
    cx, cy = (b[0] + b[2]) // 2, (b[1] + b[3]) // 2
    assert img[1, cy, cx] > img[1, cy, b[0] - 2] + 0.03
    # everything outside the resampled 96 px / 1.5 = 64 px image is padding
    assert img.shape[-1] == 64


def test_neighbour_lesions_become_ignore_regions(data) -> None:
    m = data.manifest
    series1 = m[m["patient_index"] == 1]
    # the two lesions of series 1 are 2 mm apart and 6-7 mm in radius: each crosses the other's
    # key slice
    boxes = neighbour_ignore_boxes(series1, m)
    assert set(boxes) == {"000001_01_01_002.png", "000001_01_01_003.png"}
    on3 = series1[series1["file_name"] == "000001_01_01_002.png"]
    assert boxes["000001_01_01_003.png"].round(2).tolist() == on3[
        ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].to_numpy(np.float32).round(2).tolist()
    # a radius factor too small to reach the next slice: none
    assert neighbour_ignore_boxes(series1, m, factor=0.1) == {}
    ds = KeySliceDataset(series1, data.images_root, context=m, image_size=64, spacing_mm=1.5)
    assert all(sorted(ds[i][1]["labels"].tolist()) == [-1, 1] for i in range(2))
    ds = KeySliceDataset(series1, data.images_root, context=m, image_size=64, spacing_mm=1.5,
                         unannotated="none")
    assert all(ds[i][1]["labels"].tolist() == [1] for i in range(2))


def test_noisy_unlabelled_and_not_a_lesion(data) -> None:
    m = data.manifest
    test = m[m["split"] == 3]  # one clean lesion, one noisy
    ds = KeySliceDataset(test, data.images_root, image_size=64, spacing_mm=1.5,
                         unannotated="none")
    labels = ds[0][1]["labels"].tolist()
    noisy_first = bool(test["possibly_noisy"].iloc[0])
    assert labels == ([-1, 1] if noisy_first else [1, -1])
    ids = test["lesion_id"].astype(str).tolist()
    clean_id = ids[1] if noisy_first else ids[0]
    # the clean one marked "not a lesion": dropped; the noisy one stays an ignore region
    ds = KeySliceDataset(test, data.images_root, image_size=64, spacing_mm=1.5,
                         class_index={clean_id: 0}, unannotated="none")
    assert ds[0][1]["labels"].tolist() == [-1]
    assert ds[0][1]["boxes"].shape == (1, 4)


def test_augmentation_is_drawn_from_seed_epoch_and_item(data) -> None:
    m = data.manifest
    train = m[m["split"] == 1]
    kw = dict(context=m, image_size=64, spacing_mm=1.5, augment=True, seed=3)
    a = KeySliceDataset(train, data.images_root, **kw)
    b = KeySliceDataset(train, data.images_root, **kw)
    for ds in (a, b):
        ds.set_epoch(2)
    ia, ta, _ = a[1]
    ib, tb, _ = b[1]
    assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    variants = set()
    for e in range(6):
        a.set_epoch(e)
        variants.add(tuple(a[1][1]["boxes"][0].round(decimals=2).tolist()))
    assert len(variants) > 1  # flips/scales differ between epochs


def test_training_crops_keep_lesions_and_ignore_cut_ones(data) -> None:
    m = data.manifest
    train = m[m["split"] == 1]
    full = KeySliceDataset(train, data.images_root, context=m, image_size=64, spacing_mm=1.5)
    crop = KeySliceDataset(train, data.images_root, context=m, image_size=64, spacing_mm=1.5,
                           crop=32, crop_lesion_p=1.0, seed=1)
    seen_pos = 0
    for e in range(4):
        crop.set_epoch(e)
        for i in range(len(crop)):
            img, t, meta = crop[i]
            assert img.shape[-2:] == (32, 32)
            b = t["boxes"].numpy()
            assert (b >= 0).all() and (b <= 32).all()
            seen_pos += int((t["labels"] > 0).sum())
            # the crop is a window of the whole canvas: the pixels agree
            fimg, ft, _ = full[i]
            hits = [(y, x) for y in range(33) for x in range(33)
                    if torch.equal(fimg[:, y:y + 32, x:x + 32], img)]
            assert hits, meta
            # every whole lesion of the window is a target, every cut one ignored
            y0, x0 = hits[0]
            fb = ft["boxes"].numpy() - np.array([x0, y0, x0, y0])
            for box, lab in zip(fb, ft["labels"].numpy(), strict=True):
                inside = box[0] >= 0 and box[1] >= 0 and box[2] <= 32 and box[3] <= 32
                if lab > 0 and inside:
                    assert any(np.allclose(box, bb, atol=1e-4) for bb in b)
    assert seen_pos > 0  # windows are centred near lesions
    with pytest.raises(DatasetError, match="crop must be between 32 and image_size"):
        KeySliceDataset(train, data.images_root, image_size=64, crop=128)


def test_missing_images_are_a_clear_error(data, tmp_path) -> None:
    import shutil

    copy = tmp_path / "Images_png"
    shutil.copytree(data.images_root, copy)
    (copy / "000003_01_01" / "003.png").unlink()
    m = data.manifest
    with pytest.raises(DatasetError, match=r"1 of 5 key slices are missing.*000003_01_01/003.png"
                                           r" \(lesion 000003_01_01_003-"):
        KeySliceDataset(m[m["split"] == 1], copy)


def test_mined_ignore_boxes(data) -> None:
    m = data.manifest
    row = m[m["split"] == 1].iloc[0]
    f = row["file_name"]
    gt_box = [row["bbox_x1"], row["bbox_y1"], row["bbox_x2"], row["bbox_y2"]]
    pred = pd.DataFrame([
        (f, *gt_box, 0.99, "lesion"),             # the annotation itself: not mined
        (f, 70.0, 70.0, 85.0, 85.0, 0.9, "lesion"),  # confident, elsewhere: mined
        (f, 5.0, 70.0, 20.0, 85.0, 0.2, "lesion"),   # not confident: not mined
        ("999999_01_01_001.png", 1.0, 1.0, 9.0, 9.0, 0.9, "lesion"),  # not a training slice
    ], columns=list(PREDICTION_COLUMNS))
    mined = mined_ignore_boxes(pred, m[m["split"] == 1], score_threshold=0.5)
    assert list(mined) == [f] and mined[f].tolist() == [[70.0, 70.0, 85.0, 85.0]]


# ---------------------------------------------------------------------------------------------
# labels


def test_labels_table_reading_and_errors(tmp_path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("lesion_id,label,extra\na,liver,1\nb, lung ,2\na,liver,1\n")
    df = read_labels_table(p)
    assert df.to_dict("list") == {"lesion_id": ["a", "b"], "label": ["liver", "lung"]}
    df.to_parquet(tmp_path / "labels.parquet")
    assert read_labels_table(tmp_path / "labels.parquet").equals(df)
    cases = {
        "lesion_id,label\n": "label set is empty",
        "lesion_id,klass\na,liver\n": "missing column.*label",
        "lesion_id,label\na,liver\nb,\n": r"row 2 \(lesion b\), field label: empty",
        "lesion_id,label\na,liver\na,lung\n": "lesion a has several labels",
    }
    for text, msg in cases.items():
        p.write_text(text)
        with pytest.raises(LabelsError, match=msg):
            read_labels_table(p)
    with pytest.raises(LabelsError, match="not found"):
        read_labels_table(tmp_path / "nope.csv")
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(LabelsError, match=r"\.parquet or \.csv"):
        read_labels_table(tmp_path / "labels.json")


def test_class_indices() -> None:
    labels = pd.DataFrame({"lesion_id": ["a", "b", "c", "d", "e"],
                           "label": ["lung", "liver", "lung", "not a lesion", "unsure"]})
    classes, idx = class_indices(["a", "b", "c", "d", "e", "x"], labels)
    assert classes == ["liver", "lung"]
    assert idx.to_dict() == {"a": 2, "b": 1, "c": 2, "d": 0, "e": -1, "x": -1}
    single, idx = class_indices(["a", "z"], None)
    assert single == ["lesion"] and idx.to_dict() == {"a": 1, "z": 1}
    with pytest.raises(LabelsError, match="label set is empty"):
        class_indices(["x", "y"], labels)
    with pytest.raises(LabelsError, match=r"lung are not classes of the model \(liver, bone\)"
                                          r".*--class-map"):
        class_indices(["a", "b"], labels, ["liver", "bone"])
    with pytest.raises(LabelsError, match="bone have no training example"):
        class_indices(["a", "b"], labels, ["liver", "lung", "bone"])
    with pytest.raises(LabelsError, match="single-class"):
        class_indices(["a"], None, ["liver"])
    mapped = apply_class_map(labels, parse_class_map(["lung=liver"]))
    assert class_indices(["a", "b"], mapped, ["liver"])[1].tolist() == [1, 1]
    with pytest.raises(LabelsError, match="LABEL=CLASS"):
        parse_class_map(["lung"])
    with pytest.raises(LabelsError, match="no lesion has"):
        apply_class_map(labels, {"kidney": "liver"})


# ---------------------------------------------------------------------------------------------
# training, checkpoints, lineage


def test_fit_writes_checkpoints_with_lineage(fitted, data) -> None:
    det, folder = fitted
    assert {p.name for p in folder.iterdir()} >= {"model.pt", "last.pt", "config.json"}
    assert det.classes_ == ["abdomen", "liver", "lung"]
    lin = det.lineage_
    assert lin["label_snapshot_id"] == 7 and lin["labels_source"] == "truth"
    from deeplesion_lab.manifest import data_hash

    assert lin["data_hash"] == data_hash(data.manifest[data.manifest["split"] == 1])
    assert lin["params"]["image_size"] == 64 and "torch" in lin["versions"]
    assert lin["n_images"] == 5 and lin["n_ignore_regions"] == 2
    h = det.history_[0]
    assert h["images"] == 5 and h["images_per_s"] > 0 and np.isfinite(h["loss"])
    assert det.n_iter_ == 3  # 5 images, batches of 2


def test_predict_save_load_round_trip(fitted, data) -> None:
    det, folder = fitted
    pred = det.predict(data.manifest, "test")
    assert list(pred.columns) == list(PREDICTION_COLUMNS)
    assert set(pred["file_name"]) <= {"000006_01_01_003.png"}
    assert set(pred["label"]) <= set(det.classes_)
    assert len(pred) > 0
    # boxes are in the original 96 px frame (canvas 64 px x 1.5)
    assert pred[["x1", "y1", "x2", "y2"]].to_numpy().max() <= 96.0 + 1e-3
    assert pred["score"].between(0, 1).all()
    for _, g in pred.groupby("file_name", sort=False):  # best first within each key slice
        assert (g["score"].diff().dropna() <= 1e-6).all()
    loaded = LesionDetector.load(folder)
    assert loaded.classes_ == det.classes_ and loaded.lineage_["label_snapshot_id"] == 7
    pd.testing.assert_frame_equal(loaded.predict(data.manifest, "test"), pred)
    assert loaded.predict_ms_per_image_ > 0
    with pytest.raises(CheckpointError, match="not found"):
        LesionDetector.load(folder / "nope.pt")


def test_checkpoints_of_another_layout_or_newer_format_are_clear_errors(fitted, tmp_path) -> None:
    import torch

    _, folder = fitted
    ck = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    # an older network layout: a renamed layer and a box head of another width
    old = dict(ck, state_dict={(k.replace("rpn.head.conv", "rpn.head.conv_old")): v
                               for k, v in ck["state_dict"].items()})
    old["params"] = dict(ck["params"], box_head_size=ck["params"]["box_head_size"] * 2)
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"do not fit the network .* missing, .* unexpected, "
                                              r".* of another shape.*train-detector --overwrite"):
        LesionDetector.load(tmp_path / "old.pt")
    torch.save(dict(ck, format_version=99), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format 99 is newer"):
        LesionDetector.load(tmp_path / "new.pt")


def test_resume_after_interruption_retraces_an_uninterrupted_run(data, tmp_path) -> None:
    kw = dict(TINY, epochs=2, checkpoint_every=2, augment=True)
    straight = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "a")

    interrupt_fit(kw, data.manifest, tmp_path / "b", at_step=5)
    assert not (tmp_path / "b" / "model.pt").exists()
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)
    steps = []
    resumed = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "b",
                                       callback=lambda i: steps.append(i["global_step"]))
    assert steps == [5, 6]
    assert resumed.n_iter_ == straight.n_iter_ == 6
    sa, sb = straight.model_.state_dict(), resumed.model_.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    # more epochs later: continues from the finished run
    more = LesionDetector(**dict(kw, epochs=3)).fit(
        data.manifest, checkpoint_dir=tmp_path / "b",
        callback=lambda i: steps.append(i["global_step"]))
    assert steps[-3:] == [7, 8, 9] and len(more.history_) == 3


def test_resume_refuses_other_settings(data, tmp_path) -> None:
    kw = dict(TINY, epochs=1)
    LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "c")
    before = (tmp_path / "c" / "model.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"other settings \(differs in: params.lr\)"):
        LesionDetector(**dict(kw, lr=0.5)).fit(data.manifest, checkpoint_dir=tmp_path / "c")
    with pytest.raises(CheckpointError, match="labels_hash"):
        LesionDetector(**kw).fit(data.manifest, true_types(data.manifest),
                                 checkpoint_dir=tmp_path / "c")
    assert (tmp_path / "c" / "model.pt").read_bytes() == before  # nothing overwritten
    LesionDetector(**dict(kw, lr=0.5)).fit(data.manifest, checkpoint_dir=tmp_path / "c",
                                           resume=False)
    assert (tmp_path / "c" / "model.pt").read_bytes() != before


def test_warm_start_with_changed_classes(fitted, data) -> None:
    det, folder = fitted
    labels = true_types(data.manifest)
    renamed = labels.assign(label=labels["label"].replace({"abdomen": "kidney"}))
    ft = LesionDetector.load(folder, epochs=1, warm_start=True)
    with pytest.raises(LabelsError, match="kidney are not classes of the model.*--reset-head"):
        ft.fit(data.manifest, renamed)
    merged = labels.assign(label=labels["label"].replace({"abdomen": "liver"}))
    with pytest.raises(LabelsError, match="abdomen have no training example"):
        ft.fit(data.manifest, merged)
    ft.fit(data.manifest, renamed, reset_head=True)
    assert ft.classes_ == ["kidney", "liver", "lung"]
    assert ft.lineage_["parent"]["label_snapshot_id"] == 7  # the parent's lineage is kept
    before = det.model_.state_dict()
    after = ft.model_.state_dict()
    assert not torch.equal(before["backbone.body.0.0.weight"], after["backbone.body.0.0.weight"])


def test_real_slices(real_dir, tmp_path) -> None:
    """Real 512 px DeepLesion key slices: context, spacing normalisation, prediction frame."""
    from deeplesion_lab.manifest import build_manifest

    m, _ = build_manifest(real_dir / "DL_info_test.csv")
    rows = m[m["has_image"]].head(3)
    assert len(rows) == 3
    ds = KeySliceDataset(rows, real_dir / "Images_png", image_size=512, spacing_mm=0.8)
    for i in range(len(ds)):
        img, target, meta = ds[i]
        row = rows[rows["file_name"] == meta["file_name"]].iloc[0]
        assert meta["scale"] == pytest.approx(min(row["spacing_x"] / 0.8, 1.0))
        assert img.shape == (3, 512, 512)
        assert float(img[1].std()) > 0.01  # a CT slice, not a blank
        b = target["boxes"][0].numpy()
        assert np.allclose(b / meta["scale"], row[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]]
                           .to_numpy(float).clip(0, 512), atol=1e-3)
    det = LesionDetector(image_size=512, spacing_mm=0.8, box_head_size=32, progress=False)
    det.classes_ = ["lesion"]
    torch.manual_seed(0)
    det.model_ = det._build(1).eval()
    pred = det.predict(rows.assign(split=3), "test", images_root=real_dir / "Images_png")
    assert list(pred.columns) == list(PREDICTION_COLUMNS)
    if len(pred):
        assert pred[["x1", "y1", "x2", "y2"]].to_numpy().min() >= 0
        assert pred[["x1", "y1", "x2", "y2"]].to_numpy().max() <= 512 / min(
            rows["spacing_x"].min() / 0.8, 1.0) + 1e-3
