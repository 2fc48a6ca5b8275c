"""``demo-data --like``: synthetic slices for the rows of a DL_info.csv, without real data.

The source CSV is the demo generator's own (so the test runs everywhere); the real-data
version is ``test_demo_data.py::test_like_renders_real_rows``.
"""

from __future__ import annotations

import pandas as pd
import pytest

from deeplesion_lab.demo import generate_demo, render_like
from deeplesion_lab.dl_info import read_dl_info
from deeplesion_lab.errors import LabError
from deeplesion_lab.images import key_slice_path, load_hu, slice_path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("like_src")
    return generate_demo(d / "demo", n_patients=2, seed=3, size=128, progress=False).csv_path


def test_like_renders_the_rows_it_is_given(source, tmp_path):
    src = read_dl_info(source).lesions
    files = src["file_name"].drop_duplicates().iloc[:3]
    res = render_like(source, tmp_path / "like", limit=3, seed=1, unannotated_share=0.5)
    out = read_dl_info(res.csv_path)
    assert out.n_rejected_rows == 0
    got, want = out.lesions, src[src["file_name"].isin(set(files))]
    assert list(got["file_name"]) == list(want["file_name"])  # every row of the 3 key images
    for col in ("lesion_id", "bbox_x1", "bbox_y2", "coarse_type", "split", "spacing_x"):
        assert got[col].tolist() == want[col].tolist(), col
    for r in got.itertuples():
        hu = load_hu(key_slice_path(res.images_root, r.file_name),
                     (r.image_height, r.image_width))
        assert hu.shape == (r.image_height, r.image_width) and hu.std() > 0
        for i in range(r.slice_start, r.slice_end + 1):
            assert slice_path(res.images_root, r.file_name, i).is_file()
    truth = pd.read_parquet(res.truth_path)
    annotated = truth[truth["annotated"]]
    assert sorted(annotated["lesion_id"]) == sorted(got["lesion_id"])
    # half of the truth's lesions are unannotated ones added around the rows' key slices
    assert (~truth["annotated"]).sum() == pytest.approx(len(annotated), abs=2)


def test_like_is_reproducible_and_seeded(source, tmp_path):
    a = render_like(source, tmp_path / "a", limit=1, seed=4)
    b = render_like(source, tmp_path / "b", limit=1, seed=4)
    c = render_like(source, tmp_path / "c", limit=1, seed=5)
    name = read_dl_info(a.csv_path).lesions["file_name"].iloc[0]
    img = [key_slice_path(r.images_root, name).read_bytes() for r in (a, b, c)]
    assert img[0] == img[1] and img[0] != img[2]


def test_like_bad_input_is_a_clear_error(source, tmp_path):
    with pytest.raises(LabError, match="limit"):
        render_like(source, tmp_path / "x", limit=0)
    with pytest.raises(LabError, match="seed"):
        render_like(source, tmp_path / "x", seed=-1)
    bad = tmp_path / "bad.csv"
    df = pd.read_csv(source, nrows=1)
    df["Image_size"] = "32, 32"  # smaller than the lesion's box: the row is rejected
    df.to_csv(bad, index=False)
    with pytest.raises(LabError, match=r"bad\.csv: no valid rows to render \(1 rejected\)"):
        render_like(bad, tmp_path / "y")
    assert not (tmp_path / "y").exists(), "nothing is written"
