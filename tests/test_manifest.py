"""Manifests and the `deeplesion-lab manifest` command, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from deeplesion_lab.dl_info import OFFICIAL_COLUMNS
from deeplesion_lab.manifest import ManifestError, load_schema, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deeplesion_lab.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_schema_file_in_data_manifests_matches_package_copy() -> None:
    shipped = load_schema()
    versioned = json.loads((REPO / "data_manifests" / "schema.json").read_text())
    assert shipped == versioned
    doc = (REPO / "data_manifests" / "README.md").read_text()
    for col in shipped["columns"]:
        assert f"`{col}`" in doc, f"column {col} undocumented in data_manifests/README.md"


def test_cli_manifest_on_real_test_split(real_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "test_split.parquet"
    res = cli("manifest", str(real_dir / "DL_info_test.csv"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "4927 lesions" in res.stdout
    assert "0 rows rejected" in res.stdout
    assert not (tmp_path / "test_split.rejected.csv").exists()
    df = read_manifest(out)
    assert len(df) == 4927
    assert set(load_schema()["columns"]) <= set(df.columns)
    assert df.attrs["schema_version"] == "1"
    assert len(df.attrs["data_hash"]) == 12
    # Images_png beside the CSV is found by default: 18 key slices of this split are there
    assert Path(df.attrs["images_root"]).name == "Images_png"
    assert int(df["has_image"].sum()) == 18


def test_metadata_only_manifest_without_images(real_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "DL_info.csv"
    src.write_bytes((real_dir / "DL_info_test.csv").read_bytes())
    res = cli("manifest", str(src), "--out", str(tmp_path / "meta.parquet"))
    assert res.returncode == 0, res.stderr
    assert "metadata-only" in res.stdout
    df = read_manifest(tmp_path / "meta.parquet")
    assert not df["has_image"].any()
    assert df.attrs["images_root"] == ""


def test_manifest_with_images_finds_the_real_key_slices(real_dir: Path, tmp_path: Path) -> None:
    res = write_manifest(
        real_dir / "DL_info_test.csv", tmp_path / "m.parquet", real_dir / "Images_png"
    )
    assert int(res.lesions["has_image"].sum()) == 18
    df = read_manifest(tmp_path / "m.parquet")
    root = Path(df.attrs["images_root"])
    for rel in df.loc[df["has_image"], "image_path"]:
        assert (root / rel).is_file()


def test_manifest_ids_identical_on_rebuild(real_dir: Path, tmp_path: Path) -> None:
    a = write_manifest(real_dir / "DL_info_kaggle_subset.csv", tmp_path / "a.parquet").lesions
    b = write_manifest(real_dir / "DL_info_kaggle_subset.csv", tmp_path / "b.parquet").lesions
    assert a["lesion_id"].tolist() == b["lesion_id"].tolist()
    assert read_manifest(tmp_path / "a.parquet").attrs["data_hash"] == read_manifest(
        tmp_path / "b.parquet"
    ).attrs["data_hash"]


def test_cli_broken_rows_go_to_rejected_csv(real_dir: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(real_dir / "DL_info_test.csv", dtype=str, keep_default_na=False).head(50)
    raw.loc[3, "Bounding_boxes"] = "1, 2, x, 4"
    raw.loc[10, "Coarse_lesion_type"] = "42"
    raw.loc[20, "Lesion_diameters_Pixel_"] = "-3, 2"
    src = tmp_path / "broken.csv"
    raw.to_csv(src, index=False)
    out = tmp_path / "OUT.parquet"
    res = cli("manifest", str(src), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "rejected 3 rows" in res.stdout
    assert "OUT.rejected.csv" in res.stdout
    assert read_manifest(out).shape[0] == 47
    rej = pd.read_csv(tmp_path / "OUT.rejected.csv")
    assert list(rej.columns) == ["line", "file_name", "column", "value", "reason"]
    assert rej[["line", "column"]].values.tolist() == [
        [5, "Bounding_boxes"],
        [12, "Coarse_lesion_type"],
        [22, "Lesion_diameters_Pixel_"],
    ]


def test_cli_missing_column_exits_nonzero_naming_it(tmp_path: Path, real_dir: Path) -> None:
    raw = pd.read_csv(real_dir / "DL_info_test.csv", dtype=str, keep_default_na=False).head(5)
    raw.drop(columns=["Key_slice_index"]).to_csv(tmp_path / "nocol.csv", index=False)
    out = tmp_path / "o.parquet"
    res = cli("manifest", str(tmp_path / "nocol.csv"), "--out", str(out))
    assert res.returncode == 2
    assert "Key_slice_index" in res.stderr
    assert "nocol.csv" in res.stderr
    assert not out.exists()


def test_failed_rebuild_keeps_the_previous_manifest(real_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    write_manifest(real_dir / "DL_info_kaggle_subset.csv", out)
    before = out.read_bytes()
    (tmp_path / "bad.csv").write_text(",".join(OFFICIAL_COLUMNS[:-1]) + "\n")
    res = cli("manifest", str(tmp_path / "bad.csv"), "--out", str(out))
    assert res.returncode == 2
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".m.parquet.*"))  # no temp file left behind


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="junk.parquet: not a readable parquet"):
        read_manifest(tmp_path / "junk.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "foreign.parquet")
    with pytest.raises(ManifestError, match="not a deeplesion-lab manifest"):
        read_manifest(tmp_path / "foreign.parquet")


def test_every_subcommand_has_help() -> None:
    from deeplesion_lab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "manifest" in sub.choices
    for name in sub.choices:
        res = cli(name, "--help")
        assert res.returncode == 0, (name, res.stderr)
        assert "usage: deeplesion-lab" in res.stdout
