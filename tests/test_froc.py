"""The DeepLesion FROC evaluator on hand-made cases with known answers.

Every expected number below is worked out by hand in the comments from the protocol (see
``deeplesion_lab/detection/froc.py``); one test also checks the evaluator against a direct
transcription of the published algorithm (MULAN's ``FROC`` + ``sens_at_FP`` with scipy) on
random cases.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from deeplesion_lab.detection.froc import (
    FP_RATES,
    PREDICTION_COLUMNS,
    FROCError,
    box_iou,
    evaluate_predictions,
    froc,
    read_predictions,
    results_table,
)

KEYS = ["0.5", "1", "2", "4", "8", "16"]


def det(*rows):
    return np.array(rows, dtype=float).reshape(-1, 5)


def gt(*rows):
    return np.array(rows, dtype=float).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# IoU


def test_iou_uses_the_inclusive_pixel_convention() -> None:
    # (0,0,9,9) is 10x10 = 100 px, (0,0,9,19) is 10x20 = 200 px, overlap 100 -> exactly 0.5
    assert box_iou([0, 0, 9, 9], gt([0, 0, 9, 19]))[0] == pytest.approx(0.5)
    # identical boxes
    assert box_iou([3, 4, 20, 30], gt([3, 4, 20, 30]))[0] == pytest.approx(1.0)
    # touching edges share one pixel column in this convention: 1x10 / (100 + 100 - 10)
    assert box_iou([0, 0, 9, 9], gt([9, 0, 18, 9]))[0] == pytest.approx(10 / 190)
    # far apart
    assert box_iou([0, 0, 9, 9], gt([50, 50, 60, 60]))[0] == 0.0


# ---------------------------------------------------------------------------------------------
# hand-made cases


def test_one_hit_one_miss() -> None:
    # image A: the lesion is found (IoU 1). image B: the only detection is elsewhere (a FP),
    # its lesion is missed. 2 images, 2 lesions.
    a = gt([10, 10, 29, 29])
    b = gt([50, 50, 69, 69])
    c = froc([det([10, 10, 29, 29, 0.9]), det([0, 0, 9, 9, 0.8])], [a, b])
    assert list(c.outcome) == ["tp", "fp"]
    assert c.n_images == 2 and c.n_gt == 2
    # 0.5 FP/image = 1 FP allowed over 2 images: both detections kept -> 1 of 2 lesions
    assert c.sensitivity_at(FP_RATES).tolist() == [0.5] * 6


def test_false_positives_at_known_scores() -> None:
    # one image, one lesion; detections by score: FP 0.95, FP 0.90, TP 0.80, FP 0.70
    g = gt([20, 20, 39, 39])
    d = det([60, 60, 79, 79, 0.95], [0, 0, 15, 15, 0.90], [21, 21, 40, 40, 0.80],
            [80, 0, 95, 15, 0.70])
    c = froc([d], [g])
    assert list(c.outcome) == ["fp", "fp", "tp", "fp"]
    assert c.fps.tolist() == [0, 1, 2, 2, 3]
    assert c.tps.tolist() == [0, 0, 0, 1, 1]
    # 0.5 FP: no FP allowed -> nothing kept -> 0; 1 FP: only the 0.95 detection -> 0;
    # 2 FPs: the first three (2 FPs, then the hit) -> 1; more: 1
    assert c.sensitivity_at(FP_RATES).tolist() == [0, 0, 1, 1, 1, 1]


def test_duplicates_are_neither_hits_nor_false_positives() -> None:
    g = gt([20, 20, 39, 39])
    d = det([20, 20, 39, 39, 0.9], [21, 20, 40, 39, 0.8], [19, 21, 38, 40, 0.7],
            [70, 70, 89, 89, 0.6])
    c = froc([d], [g])
    assert list(c.outcome) == ["tp", "dup", "dup", "fp"]
    assert c.fps.tolist() == [0, 0, 0, 0, 1]
    assert c.sensitivity_at([0.5, 1]).tolist() == [1.0, 1.0]


def test_a_detection_on_a_hit_lesion_can_still_hit_a_new_one() -> None:
    # two 20x20 lesions side by side, overlapping by half (IoU 1/3 with each other)
    g = gt([0, 0, 19, 19], [10, 0, 29, 19])
    d = det([0, 0, 19, 19, 0.9],  # IoU 1 with the first, 1/3 with the second: hits the first
            [5, 0, 24, 19, 0.8],  # IoU 0.6 with both: the first is taken, the second is new
            [5, 0, 24, 19, 0.7])  # both taken: a duplicate
    assert box_iou(d[1, :4], g).tolist() == [pytest.approx(0.6)] * 2
    c = froc([d], [g])
    assert list(c.outcome) == ["tp", "tp", "dup"]
    assert c.tps.tolist() == [0, 1, 2, 2] and c.fps.tolist() == [0, 0, 0, 0]


def test_one_detection_can_hit_two_lesions() -> None:
    # as in the release: every lesion the detection overlaps by 0.5 counts as hit
    g = gt([0, 0, 19, 19], [2, 0, 21, 19])
    d = det([1, 0, 20, 19, 0.9])
    assert box_iou(d[0, :4], g).tolist() == [pytest.approx(380 / 420)] * 2
    c = froc([d], [g])
    assert list(c.outcome) == ["tp"] and c.tps.tolist() == [0, 2]


def test_iou_below_threshold_is_a_false_positive() -> None:
    g = gt([0, 0, 19, 19])
    # 20x20 vs 20x10 inside: IoU = 200/400 = 0.5 -> hit; 20x9: 180/400 = 0.45 -> FP
    assert froc([det([0, 0, 19, 9, 0.5])], [g]).outcome.tolist() == ["tp"]
    assert froc([det([0, 0, 19, 8, 0.5])], [g]).outcome.tolist() == ["fp"]
    # a stricter threshold turns the first into a FP too
    assert froc([det([0, 0, 19, 9, 0.5])], [g], iou_threshold=0.6).outcome.tolist() == ["fp"]


def test_sensitivity_counts_at_most_f_times_images_false_positives() -> None:
    # 4 images, 1 lesion each. Scores: FP, FP, hit, FP, hit, FP, FP, hit, ... so that each FP
    # rate lands on a known number of hits. 0.5 FP/image = 2 FPs, 1 = 4 FPs, 2 = 8 FPs.
    gts = [gt([0, 0, 9, 9]) for _ in range(4)]
    far = [50, 50, 59, 59]
    seq = ["fp", "fp", "tp0", "fp", "tp1", "fp", "fp", "fp", "tp2", "fp", "fp", "fp", "fp",
           "tp3"]
    dets = [[] for _ in range(4)]
    for k, s in enumerate(seq):
        score = 1.0 - k * 0.01
        if s == "fp":
            dets[k % 4].append([*far, score])
        else:
            dets[int(s[2])].append([0, 0, 9, 9, score])
    c = froc([np.array(d).reshape(-1, 5) for d in dets], gts)
    # 2 FPs: fp fp tp0 -> 1 hit (the 3rd FP comes before tp1); 4 FPs: .. tp1 fp fp -> 2 hits
    # 8 FPs: ..tp2 fp fp fp -> 3; 10 FPs -> tp3 came after the 10th FP -> 3 at 2/image (8 FPs),
    # all 4 from 4/image (16 FPs) on, since only 10 FPs exist
    assert c.fps[-1] == 10
    assert c.sensitivity_at(FP_RATES).tolist() == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_detections_and_first_detection_false_positive() -> None:
    g = [gt([0, 0, 9, 9]), gt([20, 20, 29, 29])]
    c = froc([det(), det()], g)
    assert c.sensitivity_at(FP_RATES).tolist() == [0.0] * 6
    # 1 image, first detection a FP: at 0.5 FP/image no FP is allowed -> 0 (the released
    # script fails here: interp1d below its range)
    c = froc([det([50, 50, 59, 59, 0.9], [0, 0, 9, 9, 0.8])], [g[0]])
    assert c.sensitivity_at([0.5, 1]).tolist() == [0.0, 1.0]


def test_ties_keep_input_order() -> None:
    g = gt([0, 0, 9, 9])
    c1 = froc([det([0, 0, 9, 9, 0.5], [50, 50, 59, 59, 0.5])], [g])
    c2 = froc([det([50, 50, 59, 59, 0.5], [0, 0, 9, 9, 0.5])], [g])
    assert list(c1.outcome) == ["tp", "fp"] and list(c2.outcome) == ["fp", "tp"]


def test_ignore_regions() -> None:
    g = gt([0, 0, 19, 19])
    ign = gt([40, 40, 59, 59])
    d = det([40, 40, 59, 59, 0.9], [70, 70, 79, 79, 0.8], [0, 0, 19, 19, 0.7])
    c = froc([d], [g], ignore=[ign])
    assert list(c.outcome) == ["ignored", "fp", "tp"]
    c = froc([d], [g])
    assert list(c.outcome) == ["fp", "fp", "tp"]


def test_per_class_sensitivity_at_the_overall_operating_points() -> None:
    # 2 images. liver lesion hit first, lung lesion hit after 2 FPs (= 1 FP/image).
    g = [gt([0, 0, 9, 9]), gt([0, 0, 9, 9], [30, 30, 39, 39])]
    d = [det([0, 0, 9, 9, 0.9], [60, 60, 69, 69, 0.8]),
         det([60, 60, 69, 69, 0.7], [30, 30, 39, 39, 0.6])]
    c = froc(d, g, gt_classes=[["liver"], ["liver", "lung"]])
    per = c.class_sensitivity_at([0.5, 1, 2])
    # 0.5 FP/image = 1 FP: liver 1 of 2 hit, lung 0; 1 FP/image = 2 FPs: lung hit too
    assert per["liver"].tolist() == [0.5, 0.5, 0.5]
    assert per["lung"].tolist() == [0.0, 1.0, 1.0]
    assert c.sensitivity_at([0.5, 1]).tolist() == [pytest.approx(1 / 3), pytest.approx(2 / 3)]


# ---------------------------------------------------------------------------------------------
# against the published algorithm


def _official_sens_at_fp(boxes_all, gts_all, avg_fp, iou_th=0.5):
    """MULAN's detection_eval.FROC + sens_at_FP, transcribed (stable sort for ties)."""
    from scipy import interpolate

    n_img = len(boxes_all)
    img_idxs = np.hstack([[i] * len(boxes_all[i]) for i in range(n_img)]).astype(int)
    boxes_cat = np.vstack(boxes_all)
    order = np.argsort(-boxes_cat[:, -1], kind="stable")
    boxes_cat, img_idxs = boxes_cat[order, :4], img_idxs[order]
    hits = [np.zeros(len(g), dtype=bool) for g in gts_all]
    n_hits = n_miss = 0
    tps, fps = [], []
    for i in range(len(boxes_cat)):
        ov = box_iou(boxes_cat[i], gts_all[img_idxs[i]])
        if len(ov) == 0 or ov.max() < iou_th:
            n_miss += 1
        else:
            for j in range(len(ov)):
                if ov[j] >= iou_th and not hits[img_idxs[i]][j]:
                    hits[img_idxs[i]][j] = True
                    n_hits += 1
        tps.append(n_hits)
        fps.append(n_miss)
    sens = np.array(tps, float) / len(np.vstack(gts_all))
    fp_per_img = np.array(fps, float) / n_img
    inside = [a for a in avg_fp if a <= fp_per_img[-1]]
    outside = [a for a in avg_fp if a > fp_per_img[-1]]
    f = interpolate.interp1d(fp_per_img, sens)
    return np.hstack([f(np.array(inside)), np.ones(len(outside)) * sens[-1]])


def test_matches_the_published_algorithm_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        n_img = int(rng.integers(2, 7))
        gts, dets = [], []
        for _ in range(n_img):
            m = int(rng.integers(1, 4))
            xy = rng.uniform(0, 100, (m, 2))
            g = np.hstack([xy, xy + rng.uniform(5, 30, (m, 2))])
            gts.append(g)
            rows = []
            for _ in range(int(rng.integers(1, 20))):
                if rng.random() < 0.4:
                    b = g[rng.integers(m)] + rng.normal(0, 3, 4)
                else:
                    p = rng.uniform(0, 100, 2)
                    b = np.r_[p, p + rng.uniform(5, 30, 2)]
                if b[2] > b[0] and b[3] > b[1]:
                    rows.append(np.r_[b, rng.random()])
            dets.append(np.array(rows).reshape(-1, 5))
        try:
            ref = _official_sens_at_fp(dets, gts, list(FP_RATES))
        except ValueError:  # the release fails when f x images < 1 before the first point
            continue
        assert froc(dets, gts).sensitivity_at(FP_RATES) == pytest.approx(ref)
        checked += 1
    assert checked > 100


# ---------------------------------------------------------------------------------------------
# predictions CSV + manifest ground truth


def _manifest(rows) -> pd.DataFrame:
    cols = ["lesion_id", "file_name", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
            "possibly_noisy", "split", "coarse_type_name"]
    return pd.DataFrame(rows, columns=cols)


MANIFEST = _manifest([
    ("a1", "a.png", 10, 10, 29, 29, 0, 3, "liver"),
    ("b1", "b.png", 10, 10, 29, 29, 0, 3, "lung"),
    ("b2", "b.png", 50, 50, 69, 69, 1, 3, "lung"),      # noisy, beside a clean lesion
    ("c1", "c.png", 10, 10, 29, 29, 1, 3, "bone"),      # noisy, alone: image not evaluated
    ("v1", "v.png", 10, 10, 29, 29, 0, 2, "liver"),     # validation split
])


def _preds(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def test_evaluate_predictions_excludes_noisy_lesions() -> None:
    preds = _preds([
        ("a.png", 10, 10, 29, 29, 0.9, "lesion"),   # hit a1
        ("b.png", 50, 50, 69, 69, 0.8, "lesion"),   # on noisy b2: ignored
        ("c.png", 10, 10, 29, 29, 0.7, "lesion"),   # noisy-only image: not evaluated
        ("v.png", 10, 10, 29, 29, 0.6, "lesion"),   # other split: not evaluated
        ("b.png", 80, 80, 89, 89, 0.5, "lesion"),   # FP
        ("b.png", 10, 10, 29, 29, 0.4, "lesion"),   # hit b1
    ])
    res = evaluate_predictions(preds, MANIFEST, "test")
    assert res.n_images == 2 and res.n_lesions == 2 and res.n_noisy_excluded == 2
    assert res.n_detections == 4 and res.n_detections_outside == 2
    assert list(res.curve.outcome) == ["tp", "ignored", "fp", "tp"]
    # 0.5 FP/image = 1 FP over 2 images: everything kept -> 2/2
    assert res.sensitivity == dict.fromkeys(KEYS, 1.0)
    assert res.mean_sensitivity_0_5_to_4 == 1.0
    # the release's handling: the noisy lesion is simply absent, so its detection is a FP,
    # and the FP at 0.5 comes before the b1 hit: at 0.5 FP/image (1 FP) only a1 is found
    drop = evaluate_predictions(preds, MANIFEST, "test", noisy="drop")
    assert list(drop.curve.outcome) == ["tp", "fp", "fp", "tp"]
    assert drop.sensitivity["0.5"] == 0.5 and drop.sensitivity["1"] == 1.0


def test_evaluate_predictions_metrics_keys_and_per_class() -> None:
    preds = _preds([("a.png", 10, 10, 29, 29, 0.9, "liver")])
    res = evaluate_predictions(preds, MANIFEST, "test")
    m = json.loads(json.dumps(res.to_metrics()))
    assert list(m["sensitivity"]) == KEYS
    assert m["sensitivity"]["0.5"] == 0.5
    assert m["per_class"] == {"liver": dict.fromkeys(KEYS, 1.0), "lung": dict.fromkeys(KEYS, 0.0)}
    assert m["mean_sensitivity_0_5_to_4"] == 0.5
    assert "0.500" in results_table({"x": res})
    # validation split: one image, one lesion, never detected
    val = evaluate_predictions(preds, MANIFEST, "val")
    assert val.n_images == 1 and val.sensitivity["16"] == 0.0
    assert evaluate_predictions(preds, MANIFEST, "all").n_images == 3


def test_evaluate_predictions_errors() -> None:
    preds = _preds([])
    with pytest.raises(FROCError, match="no lesion to evaluate in split 'train'"):
        evaluate_predictions(preds, MANIFEST, "train")
    with pytest.raises(FROCError, match="unknown split"):
        evaluate_predictions(preds, MANIFEST, "testing")
    res = evaluate_predictions(preds, MANIFEST, "test")  # no detection at all is fine
    assert res.sensitivity["16"] == 0.0


def test_read_predictions_round_trip_and_errors(tmp_path) -> None:
    p = tmp_path / "pred.csv"
    _preds([("a.png", 1, 2, 3, 4, 0.5, "liver")]).to_csv(p, index=False)
    df = read_predictions(p)
    assert list(df.columns) == list(PREDICTION_COLUMNS) and df["x2"].iloc[0] == 3.0
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(PREDICTION_COLUMNS) + "\n")
    assert read_predictions(empty).empty

    with pytest.raises(FROCError, match="not found"):
        read_predictions(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,x1,y1,x2,y2,score\na.png,1,2,3,4,0.5\n")
    with pytest.raises(FROCError, match="missing column.*label"):
        read_predictions(bad)
    bad.write_text("file_name,x1,y1,x2,y2,score,label\na.png,1,2,3,4,0.5,l\nb.png,1,x,3,4,1,l\n")
    with pytest.raises(FROCError, match=r"line 3, field y1: 'x'"):
        read_predictions(bad)
    bad.write_text("file_name,x1,y1,x2,y2,score,label\na.png,5,2,3,4,0.5,l\n")
    with pytest.raises(FROCError, match=r"line 2.*a.png is empty"):
        read_predictions(bad)
    bad.write_text("file_name,x1,y1,x2,y2,score,label\na.png,1,2,3,4,nan,l\n")
    with pytest.raises(FROCError, match="field score"):
        read_predictions(bad)


def test_froc_plots(tmp_path) -> None:
    from deeplesion_lab.detection.plots import froc_html, plot_froc

    preds = _preds([("a.png", 10, 10, 29, 29, 0.9, "l"), ("b.png", 80, 80, 89, 89, 0.5, "l")])
    res = {"model": evaluate_predictions(preds, MANIFEST, "test")}
    png = plot_froc(res, tmp_path / "froc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = froc_html(res, tmp_path / "froc.html")
    if html is None:
        pytest.skip("plotly not installed")
    text = html.read_text()
    import re

    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from elsewhere
    assert len(text) > 1_000_000  # plotly.js itself is inlined


def test_real_test_split_ground_truth(real_dir) -> None:
    """The official test split: 4,927 lesions, 15 noisy, each alone on its key slice."""
    from deeplesion_lab.manifest import build_manifest

    m, _ = build_manifest(real_dir / "DL_info_test.csv")
    clean = m[m["possibly_noisy"] == 0]
    perfect = pd.DataFrame({
        "file_name": clean["file_name"], "x1": clean["bbox_x1"], "y1": clean["bbox_y1"],
        "x2": clean["bbox_x2"], "y2": clean["bbox_y2"], "score": 1.0, "label": "lesion"})
    res = evaluate_predictions(perfect, m, "test")
    assert res.n_lesions == 4927 - 15 and res.n_noisy_excluded == 15
    # the noisy lesions lie on 14 key slices (two share one) that hold no clean lesion
    assert res.n_images == 4831 - 14
    assert res.sensitivity == dict.fromkeys(KEYS, 1.0)
    assert sum(len(v) for v in res.per_class) and set(res.per_class) == {
        "bone", "abdomen", "mediastinum", "liver", "lung", "kidney", "soft tissue", "pelvis"}
    # boxes shifted by half their width miss (IoU 1/3; one lands on a neighbouring lesion) and
    # are false positives: 4911 FPs on 4817 images, 1.02 per image; the true boxes, added at a
    # lower score, are found only beyond that many FPs
    w = clean["bbox_x2"] - clean["bbox_x1"]
    shifted = perfect.assign(x1=perfect["x1"] + w / 2, x2=perfect["x2"] + w / 2, score=0.9)
    res = evaluate_predictions(pd.concat([shifted, perfect.assign(score=0.5)]), m, "test")
    assert res.sensitivity["0.5"] == res.sensitivity["1"] == pytest.approx(1 / 4912)
    assert res.sensitivity["2"] == 1.0


# ---------------------------------------------------------------------------------------------
# Class-aware evaluation (issue 14): a hit needs the lesion's type


def test_class_aware_froc_wrong_class_is_a_false_positive() -> None:
    d = [det([10, 10, 29, 29, 0.9], [50, 50, 69, 69, 0.8]), det([10, 10, 29, 29, 0.7])]
    g = [gt([10, 10, 29, 29], [50, 50, 69, 69]), gt([10, 10, 29, 29])]
    classes = [["liver", "lung"], ["bone"]]
    names = [["liver", "liver"], ["bone"]]  # the second detection names the wrong type
    c = froc(d, g, gt_classes=classes, det_classes=names)
    assert list(c.outcome) == ["tp", "fp", "tp"]
    assert c.tps[-1] == 2 and c.fps[-1] == 1
    # class-agnostic: all three are hits
    assert list(froc(d, g, gt_classes=classes).outcome) == ["tp", "tp", "tp"]
    with pytest.raises(FROCError, match="det_classes needs gt_classes"):
        froc(d, g, det_classes=names)
    with pytest.raises(FROCError, match="image 1: 2 detection classes for 1 detections"):
        froc(d, g, gt_classes=classes, det_classes=[["liver", "liver"], ["bone", "bone"]])


def test_evaluate_predictions_class_aware_entry() -> None:
    preds = _preds([
        ("a.png", 10, 10, 29, 29, 0.9, "liver"),   # a1 is liver: class-aware hit
        ("b.png", 10, 10, 29, 29, 0.8, "liver"),   # b1 is lung: a hit, but the wrong type
    ])
    res = evaluate_predictions(preds, MANIFEST, "test")
    assert res.sensitivity["16"] == 1.0
    ca = json.loads(json.dumps(res.to_metrics()))["class_aware"]
    assert ca["n_lesions"] == 2
    assert ca["sensitivity"]["16"] == 0.5
    assert ca["per_class"] == {"liver": dict.fromkeys(KEYS, 1.0), "lung": dict.fromkeys(KEYS, 0.0)}
    assert ca["macro_sensitivity"]["4"] == 0.5
    assert list(res.class_aware.curve.outcome) == ["tp", "fp"]
    # naming b1's type right makes it a class-aware hit
    right = preds.assign(label=["liver", "lung"])
    assert evaluate_predictions(right, MANIFEST, "test").to_metrics()[
        "class_aware"]["sensitivity"]["16"] == 1.0
    # a single-class detector ("lesion") names no type: no class-aware entry
    single = preds.assign(label="lesion")
    assert "class_aware" not in evaluate_predictions(single, MANIFEST, "test").to_metrics()
    assert evaluate_predictions(preds, MANIFEST, "test", class_aware=False).class_aware is None


def test_class_aware_untyped_lesions_are_ignore_regions() -> None:
    man = MANIFEST.copy()
    man["coarse_type_name"] = man["coarse_type_name"].astype(object)
    man.loc[man["lesion_id"] == "b1", "coarse_type_name"] = "unlabeled"
    preds = _preds([
        ("a.png", 10, 10, 29, 29, 0.9, "liver"),
        ("b.png", 10, 10, 29, 29, 0.8, "lung"),    # on the untyped lesion: ignored
    ])
    res = evaluate_predictions(preds, man, "test")
    assert res.class_aware.n_lesions == 1
    assert list(res.class_aware.curve.outcome) == ["tp", "ignored"]
    assert res.to_metrics()["class_aware"]["sensitivity"]["0.5"] == 1.0
