"""Real DeepLesion as people hold it (issue 17): partial downloads and other image layouts.

Tiny synthetic DeepLesion-format data (``embedding_fixtures.make_synthetic``: 48 lesions, three
96-px slices per series) with some series folders deleted, moved or laid out as the Kaggle
subset; and the real material in ``../shared/deeplesion_real`` (skipped when absent).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from embedding_fixtures import make_synthetic

from deeplesion_lab.availability import (
    image_availability,
    resolve_images_root,
    run_uses_present_only,
    select_present,
)
from deeplesion_lab.errors import LabError
from deeplesion_lab.images import MissingSliceWarning
from deeplesion_lab.manifest import ManifestError, read_manifest, write_manifest


def _cli(*args: str) -> SimpleNamespace:
    """``deeplesion-lab ARGS`` in this process (the same entry point as the console script, without
    a fresh interpreter importing torch each time): return code and output."""
    from deeplesion_lab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The synthetic dataset, written once; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    make_synthetic(out, n_per_type=3, size=96, seed=5)
    return out


@pytest.fixture
def partial(tiny, tmp_path) -> tuple[Path, list[str]]:
    """A copy of ``tiny`` with 5 of its series folders deleted (as if their zip was not
    unzipped); returns the CSV and the deleted folder names."""
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    folders = sorted(p.name for p in (data / "Images_png").iterdir())
    gone = folders[3:6] + folders[-2:]
    for name in gone:
        shutil.rmtree(data / "Images_png" / name)
    return data / "DL_info.csv", gone


def test_missing_folders_stay_in_the_manifest_flagged_and_listed(partial, tmp_path):
    csv, gone = partial
    res = write_manifest(csv, tmp_path / "m.parquet")
    m = read_manifest(res.manifest_path)
    n_rows = len(pd.read_csv(csv))
    assert len(m) == n_rows  # no row lost
    series = m["file_name"].str.rsplit("_", n=1).str[0]
    assert set(series[~m["has_image"]]) == set(gone)
    assert m.loc[series.isin(gone), "has_image"].eq(False).all()
    assert m.loc[~series.isin(gone), "has_image"].all()
    listed = pd.read_csv(res.missing_path, dtype={"series": str})
    assert sorted(listed["series"]) == sorted(gone)
    assert listed["lesions"].sum() == int((~m["has_image"]).sum())
    # folders 3..5 are consecutive, the last two another run
    assert listed.groupby("run")["series"].apply(list).tolist() == [gone[:3], gone[3:]]
    av = image_availability(m)
    line = av.summary()
    assert f"uses {av.n_present} of {n_rows} lesions" in line
    assert f"{len(gone)} series folders (in 2 runs" in line and f"{gone[0]}..{gone[2]}" in line


def test_steps_need_the_explicit_choice(partial, tmp_path):
    csv, gone = partial
    m = read_manifest(write_manifest(csv, tmp_path / "m.parquet").manifest_path)
    with pytest.raises(LabError, match=r"of \d+ lesions have no key slice .*--present-only"):
        select_present(m, step="embed")
    used, av = select_present(m, present_only=True)
    assert len(used) == av.n_present == int(m["has_image"].sum()) and used["has_image"].all()
    assert used.attrs["images_root"] == m.attrs["images_root"]
    # a manifest written with --require-images makes the choice once for every step
    m2 = read_manifest(
        write_manifest(csv, tmp_path / "m2.parquet", require_images=True).manifest_path
    )
    assert len(m2) == len(m) and m2.attrs["images_policy"] == "present-only"
    used2, _ = select_present(m2)
    assert used2["lesion_id"].tolist() == used["lesion_id"].tolist()


def test_require_images_with_no_image_at_all_fails_and_writes_nothing(tiny, tmp_path):
    csv = tmp_path / "DL_info.csv"
    shutil.copy(tiny / "DL_info.csv", csv)
    (tmp_path / "Images_png").mkdir()
    out = tmp_path / "m.parquet"
    with pytest.raises(ManifestError, match="none of the 24 key slices"):
        write_manifest(csv, out, require_images=True)
    assert not out.exists()


def test_embed_present_only_and_mine_on_a_partial_download(partial, tmp_path):
    csv, gone = partial
    man, run = tmp_path / "m.parquet", tmp_path / "run"
    r = _cli("manifest", csv, "--out", man)
    assert r.returncode == 0, r.stderr
    assert "would add the other" in r.stdout and "missing_images.csv" in r.stdout
    r = _cli("embed", man, "--run", run, "--epochs", "1", "--no-progress")
    assert r.returncode == 2 and "--present-only" in r.stderr and not (run / "embedder.pt").exists()
    r = _cli("embed", man, "--run", run, "--epochs", "1", "--no-progress", "--present-only",
             "--channels", "context")
    assert r.returncode == 0, r.stderr
    m = read_manifest(man)
    n_present = int(m["has_image"].sum())
    assert f"embed uses {n_present} of {len(m)} lesions" in r.stdout
    emb = pd.read_parquet(run / "embeddings.parquet")
    assert set(emb["lesion_id"]) == set(m.loc[m["has_image"], "lesion_id"])
    info = json.loads((run / "run.json").read_text())
    assert run_uses_present_only(info) and info["images"] == {
        "policy": "present-only", "used": n_present, "of": len(m)}
    r = _cli("mine", "--run", run, "--no-progress", "--k-min", "2", "--k-max", "3")
    assert r.returncode == 0, r.stderr
    assert f"mine uses {n_present} of {len(m)} lesions" in r.stdout
    pl = pd.read_parquet(run / "pseudo_labels.parquet")
    assert set(pl["lesion_id"]) == set(emb["lesion_id"])
    assert len(read_manifest(man)) == len(m)  # the manifest keeps every row
    # the dashboard's header counts as its map does: the present lesions, of all
    pytest.importorskip("panel")
    from widgets.dashboard.app import Dashboard
    from widgets.dashboard.auth import User
    from widgets.dashboard.context import DashboardContext

    ctx = DashboardContext(run, local_user=User("local", "admin"))
    try:
        d = Dashboard(ctx, User("ann", "annotator"))
        assert d.map_widget.n_points == n_present < len(m)
        assert f"{n_present} of {len(m)} lesions have images" in d._header_html()
    finally:
        ctx.close()


def test_missing_context_slices_fall_back_with_one_summary_line(tiny, tmp_path):
    from deeplesion_lab.embedding import PatchConfig, build_patches, context_summary

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    folders = sorted((data / "Images_png").iterdir())
    for f in folders[:4]:  # neighbours gone, key slice 002 kept
        (f / "001.png").unlink()
        (f / "003.png").unlink()
    m = read_manifest(write_manifest(data / "DL_info.csv", tmp_path / "m.parquet").manifest_path)
    assert m["has_image"].all()
    # 1 mm apart at 5 mm slices: the neighbours are read, interpolated with the key slice
    config = PatchConfig(channels="context", slice_mm=5.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patches = build_patches(m, config, cache_dir=tmp_path / "cache")
    assert not [w for w in caught if issubclass(w.category, MissingSliceWarning)]
    series = m["file_name"].str.rsplit("_", n=1).str[0].to_numpy()
    short = np.isin(series, [f.name for f in folders[:4]])
    assert (patches.missing_context[short] == 2).all()
    assert (patches.missing_context[~short] == 0).all()
    line = context_summary(patches)
    assert line.startswith(f"context slices: {short.sum()} of {len(m)} lesions lacked "
                           f"{2 * short.sum()} neighbour slices")
    # the count survives the patch cache
    again = build_patches(m, config, cache_dir=tmp_path / "cache")
    assert (again.missing_context == patches.missing_context).all()
    # with the missing slices standing in, the patch equals the key slice in all 3 channels
    k = int(np.flatnonzero(short)[0])
    assert (patches.patches[k, 0] == patches.patches[k, 1]).all()
    assert (patches.patches[k, 2] == patches.patches[k, 1]).all()


def test_detector_loader_counts_missing_context_slices_into_one_line(tiny, tmp_path):
    """The detector's key-slice loader: a missing neighbour slice falls back to the nearest
    present one with no warning per slice, and training and detection say it in one line
    (also when the items are read elsewhere, as by DataLoader workers)."""
    from deeplesion_lab.detection.dataset import KeySliceDataset
    from deeplesion_lab.detection.train import LesionDetector, select_split

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    m = read_manifest(write_manifest(data / "DL_info.csv", tmp_path / "m.parquet").manifest_path)
    series = m["file_name"].str.rsplit("_", n=1).str[0]
    train = select_split(m, "train")
    tr_series = sorted(series[train.index].unique())
    te_series = sorted(series[select_split(m, "test").index].unique())
    gone = tr_series[:3] + te_series[:1]  # neighbours gone, key slice 002 kept
    for name in gone:
        (data / "Images_png" / name / "001.png").unlink()
        (data / "Images_png" / name / "003.png").unlink()
    kw = dict(arch="centernet", width=8, image_size=96, spacing_mm=1.0, batch_size=4,
              epochs=1, slice_spacing_mm=5.0, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = LesionDetector(**kw).fit(m)
        det.predict(m, "test")
    assert not [w for w in caught if issubclass(w.category, MissingSliceWarning)]
    n_train = train["file_name"].nunique()
    assert det.context_summary_ == (
        f"context slices: 3 of {n_train} key slices lacked 6 neighbour slices on disk; the "
        "nearest present slice of the series stood in")
    n_test = select_split(m, "test")["file_name"].nunique()
    assert det.predict_context_summary_.startswith(
        f"context slices: 1 of {n_test} key slices lacked 2 neighbour slices on disk")
    # per item: 2 for the key slices of the thinned series, 0 for the others
    ds = KeySliceDataset(train, data / "Images_png", image_size=96, spacing_mm=1.0,
                         slice_spacing_mm=5.0)
    assert (ds.missing_context == -1).all() and ds.context_summary() is None  # nothing read
    metas = [ds[i][2] for i in range(len(ds))]
    want = np.array([2 if f.rsplit("_", 1)[0] in gone else 0 for f in ds.file_names])
    assert ds.missing_context.tolist() == want.tolist()
    # the counts travel in the items' meta (DataLoader workers read in other processes)
    other = KeySliceDataset(train, data / "Images_png", image_size=96, spacing_mm=1.0,
                            slice_spacing_mm=5.0)
    k = int(np.flatnonzero(want == 2)[0])
    other.record_missing([metas[k]])
    assert other.missing_context[k] == 2 and (np.delete(other.missing_context, k) == -1).all()
    assert other.context_summary().endswith(f"({len(ds) - 1} not read yet, not counted)")
    other.record_missing(metas)
    assert other.context_summary() == ds.context_summary() == det.context_summary_
    # all present: no line
    full = KeySliceDataset(select_split(read_manifest(write_manifest(
        tiny / "DL_info.csv", tmp_path / "full.parquet").manifest_path), "train"),
        tiny / "Images_png", image_size=96, spacing_mm=1.0, slice_spacing_mm=5.0)
    for i in range(len(full)):
        full[i]
    assert (full.missing_context == 0).all() and full.context_summary() is None


def _kaggle_copy(tiny: Path, dest: Path, extras: dict[str, object]) -> Path:
    """The tiny data as the Kaggle subset holds it: ``images/`` instead of ``Images_png``, a
    ``kaggle_path`` column and some of the subset's other extra columns."""
    dest.mkdir(parents=True)
    shutil.copytree(tiny / "Images_png", dest / "images")
    df = pd.read_csv(tiny / "DL_info.csv", dtype=str, keep_default_na=False)
    for name, value in extras.items():
        df[name] = value(df) if callable(value) else value
    df.to_csv(dest / "DL_info.csv", index=False)
    return dest / "DL_info.csv"


def _kaggle_path(df: pd.DataFrame) -> pd.Series:
    stem = df["File_name"].str.replace(".png", "", regex=False)
    return "images/" + stem.str.rsplit("_", n=1).str[0] + "/" + stem.str.rsplit("_", n=1).str[1] + ".png"


def test_kaggle_layout_found_by_kaggle_path(tiny, tmp_path):
    # kaggle_path and Radius, but not the subset's bbox column: only some of the extras
    csv = _kaggle_copy(tiny, tmp_path / "kaggle", {"kaggle_path": _kaggle_path, "Radius": "7.5"})
    res = write_manifest(csv, tmp_path / "k.parquet")
    m = read_manifest(res.manifest_path)
    assert m["has_image"].all() and res.missing_path is None
    assert Path(m.attrs["images_root"]) == (tmp_path / "kaggle" / "images").resolve()
    assert "kaggle_path" in m.attrs["images_layout"]
    assert {"kaggle_path", "Radius"} <= set(m.columns) and "bbox" not in m.columns
    assert (m["Radius"] == "7.5").all()
    # the same with an images root given separately (the folder holding images/)
    m2 = read_manifest(write_manifest(csv, tmp_path / "k2.parquet",
                                      tmp_path / "kaggle").manifest_path)
    assert m2["has_image"].all() and m2.attrs["images_root"] == m.attrs["images_root"]


def test_kaggle_path_that_disagrees_with_file_name_is_a_clear_error(tiny, tmp_path):
    def wrong(df):
        p = _kaggle_path(df)
        p.iloc[4] = "images/000099_01_01/002.png"
        return p

    csv = _kaggle_copy(tiny, tmp_path / "kaggle", {"kaggle_path": wrong})
    with pytest.raises(ManifestError, match=r"line 6, kaggle_path = 'images/000099_01_01/002.png'"
                                            r": does not end with"):
        write_manifest(csv, tmp_path / "k.parquet")
    assert not (tmp_path / "k.parquet").exists()


def test_images_root_given_separately_from_the_csv(tiny, tmp_path):
    (tmp_path / "meta").mkdir()
    csv = tmp_path / "meta" / "DL_info.csv"
    shutil.copy(tiny / "DL_info.csv", csv)
    disk = tmp_path / "big_disk" / "deeplesion"
    shutil.copytree(tiny / "Images_png", disk / "Images_png")
    # no images beside the CSV: a metadata-only manifest
    m0 = read_manifest(write_manifest(csv, tmp_path / "m0.parquet").manifest_path)
    assert m0.attrs["images_root"] == "" and not m0["has_image"].any()
    # the series folders' own folder, or the folder holding Images_png: the same root
    for given in (disk / "Images_png", disk):
        m = read_manifest(write_manifest(csv, tmp_path / "m.parquet", given).manifest_path)
        assert m["has_image"].all()
        assert Path(m.attrs["images_root"]) == (disk / "Images_png").resolve()
    with pytest.raises(ManifestError, match="images folder not found"):
        write_manifest(csv, tmp_path / "m.parquet", tmp_path / "nowhere")


def test_resolve_prefers_the_layout_holding_the_key_slices(tiny, tmp_path):
    # an empty Images_png beside the CSV and the slices under images/: kaggle_path wins
    csv = _kaggle_copy(tiny, tmp_path / "k", {"kaggle_path": _kaggle_path})
    (tmp_path / "k" / "Images_png").mkdir()
    from deeplesion_lab.dl_info import read_dl_info
    from deeplesion_lab.images import key_slice_path

    les = read_dl_info(csv).lesions
    les["image_path"] = [str(key_slice_path(Path("."), f)) for f in les["file_name"]]
    root, how = resolve_images_root(csv, None, les)
    assert root == (tmp_path / "k" / "images").resolve() and "kaggle_path" in how


# the real material ------------------------------------------------------------------------------
def test_real_test_split_partial_download(real_dir, tmp_path):
    res = write_manifest(real_dir / "DL_info_test.csv", tmp_path / "t.parquet")
    m = read_manifest(res.manifest_path)
    assert len(m) == 4927
    # the material's README: 18 key slices of DL_info_test.csv rows are present
    assert int(m["has_image"].sum()) == 18
    listed = pd.read_csv(res.missing_path, dtype={"series": str})
    assert listed["lesions"].sum() == 4927 - 18
    assert res.availability.summary().startswith("uses 18 of 4,927 lesions; 4,909 lack")
    used, _ = select_present(m, present_only=True)
    assert all((Path(m.attrs["images_root"]) / p).is_file() for p in used["image_path"])


def test_real_kaggle_subset_with_an_images_root_given(real_dir, tmp_path):
    # the subset's own kaggle_path layout (images/...) is absent here; the official layout
    # is found inside the folder given
    m = read_manifest(write_manifest(real_dir / "DL_info_kaggle_subset.csv",
                                     tmp_path / "k.parquet", real_dir).manifest_path)
    assert len(m) == 1349 and {"kaggle_path", "Radius", "bbox"} <= set(m.columns)
    assert Path(m.attrs["images_root"]) == (real_dir / "Images_png").resolve()
    # 23 key slices are present, 18 of them of test rows; the subset holds some of them
    assert 0 < int(m["has_image"].sum()) <= 23


def test_real_manifest_embed_present_only_mine(real_dir, tmp_path):
    man, run = tmp_path / "t.parquet", tmp_path / "run"
    assert _cli("manifest", real_dir / "DL_info_test.csv", "--out", man).returncode == 0
    r = _cli("embed", man, "--run", run, "--present-only", "--channels", "context", "--epochs",
             "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "embed uses 18 of 4,927 lesions" in r.stdout
    assert "context slices:" in r.stdout  # the real folders hold few neighbours
    r = _cli("mine", "--run", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(run / "umap.parquet")) == 18
