"""``deeplesion-lab embed / mine / evaluate`` end to end on the demo data, and their bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from embedding_fixtures import session_demo, session_run

from deeplesion_lab.cli import main
from deeplesion_lab.evaluation import protocol_split
from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.manifest import read_manifest, write_manifest
from deeplesion_lab.run import RunDir

torch.set_num_threads(1)


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return session_run(tmp_path_factory)


def test_embed_writes_checkpoint_record_and_embeddings(made):
    run = RunDir(made["run"])
    info = run.info()
    assert info["truth"] == str(made["truth"].resolve())
    df = read_manifest(made["manifest"])
    ids, vecs = run.load_embeddings()
    assert list(ids) == df["lesion_id"].astype(str).tolist()
    assert vecs.shape == (len(df), 128) and np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    rec = json.loads((run.path / "embedder.json").read_text())
    assert rec["seed"] == 0 and rec["versions"]["torch"] == torch.__version__
    assert rec["training"]["manifest_data_hash"] == df.attrs["data_hash"]
    # the sampler knew the DL_info types of the protocol's seed and val lesions, never test
    roles = protocol_split(df["patient_index"].to_numpy())
    allowed = (roles != "test") & (df["coarse_type"].to_numpy() > 0)
    assert rec["training"]["sampler_types"] == int(allowed.sum())
    assert rec["training"]["sampler_type_roles"] == "seed+val"
    assert not list((run.path / "cache").glob("embeddings/*.npy"))  # resume chunks cleaned up
    assert "embedded" in made["output"]["embed"]


def test_mine_writes_pseudo_labels_and_map(made):
    run = RunDir(made["run"])
    pl = run.load_pseudo_labels()
    df = read_manifest(made["manifest"])
    assert list(pl.columns) == ["lesion_id", "cluster", "label", "confidence"]
    assert sorted(pl["lesion_id"]) == sorted(df["lesion_id"].astype(str))
    assert pl["cluster"].dtype == np.int64
    assert set(pl["label"]) <= set(COARSE_TYPES.values())
    assert pl["confidence"].between(0, 1).all()
    # each cluster's label is the majority known (val/test) type among its lesions
    m = pl.merge(df[["lesion_id", "coarse_type"]], on="lesion_id")
    for _, g in m.groupby("cluster"):
        known = g[g["coarse_type"] > 0]
        if len(known):
            top = known["coarse_type"].value_counts()
            assert g["label"].iloc[0] in {COARSE_TYPES[t] for t in top[top == top.max()].index}
    um = pd.read_parquet(run.umap)
    assert list(um.columns) == ["lesion_id", "x", "y"] and len(um) == len(df)
    assert np.isfinite(um[["x", "y"]].to_numpy()).all()
    mining = json.loads(run.metrics.read_text())["mining"]
    assert 3 <= mining["k"] <= 6 and mining["k_chosen_by"] == "silhouette"
    assert len(mining["k_scores"]) == 4 and mining["n_rounds"] >= 1
    assert all(0 <= v <= 1 for v in mining["round_nmi"])
    # the run records a truth file: each round's NMI to it (before the rounds, then each)
    assert len(mining["round_nmi_truth"]) == mining["n_rounds"] + 1
    assert all(0 <= v <= 1 for v in mining["round_nmi_truth"])
    # fine clusters merged by the manifest's known types; figures on the lesions of unknown type
    assert mining["merged_by_known_type"] and mining["k_fine"] >= mining["k"]
    assert 0 <= mining["nmi_truth_unseen"] <= 1 and 0 <= mining["purity_truth_unseen"] <= 1
    assert mining["n_truth_unseen"] == int((df["coarse_type"] < 1).sum())


def test_evaluate_metrics_json(made):
    metrics = json.loads(RunDir(made["run"]).metrics.read_text())
    for section, key in [
        ("mining", "nmi"), ("mining", "purity"),
        ("retrieval", "type_precision_at_5"), ("retrieval", "type_precision_at_10"),
        ("classification", "embedding_accuracy"),
        ("classification", "location_only_accuracy"),
        ("classification", "raw_intensity_accuracy"),
        ("classification", "untrained_accuracy"),
    ]:
        v = metrics[section][key]
        assert isinstance(v, float) and 0.0 <= v <= 1.0, (section, key, v)
    # the truth file gave train lesions their types: every lesion was evaluated
    assert metrics["mining"]["n_evaluated"] == metrics["evaluation"]["n_labelled"]
    out = made["output"]["evaluate"]
    assert "location only" in out and "trained embedding" in out and "nmi" in out
    # mined pseudo-labels agree with the true types better than always guessing the commonest
    assert metrics["mining"]["label_accuracy"] > metrics["mining"]["chance_label_accuracy"]
    assert (metrics["retrieval"]["type_precision_at_5"]
            > metrics["retrieval"]["chance_type_precision"])
    # "suggest next" against the truth, beside random order and confident learning
    sg = metrics["suggest"]
    assert 0 < sg["n_wrong"] < sg["n"] == metrics["evaluation"]["n_labelled"]
    for key in ("auroc", "precision_at_50", "confident_learning_auroc",
                "confident_learning_precision_at_50"):
        assert 0.0 <= sg[key] <= 1.0, key
    assert sg["random_precision"] == pytest.approx(sg["n_wrong"] / sg["n"])
    assert "suggest next" in out


def test_embed_again_reuses_checkpoint(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    before = pd.read_parquet(run / "embeddings.parquet")
    code, out, err = cli("embed", made["manifest"], "--run", run, "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert "reusing the trained embedder" in out
    pd.testing.assert_frame_equal(pd.read_parquet(run / "embeddings.parquet"), before)


def test_mine_user_k_and_no_deep_rounds(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    code, out, err = cli("mine", "--run", run, "--clusters", "3", "--rounds", "0",
                         "--no-progress")
    assert code == 0, err
    assert "without deep rounds (--rounds 0)" in out and "cached map" in out
    pl = pd.read_parquet(run / "pseudo_labels.parquet")
    assert pl["cluster"].nunique() == 3
    mining = json.loads((run / "metrics.json").read_text())["mining"]
    assert mining["k"] == 3 and mining["k_chosen_by"] == "user" and "k_scores" not in mining


def test_mine_bad_input_writes_nothing(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    before = (run / "pseudo_labels.parquet").read_bytes()
    n = len(pd.read_parquet(run / "embeddings.parquet"))
    code, _, err = cli("mine", "--run", run, "--clusters", n + 5, "--no-progress")
    assert code == 2 and f"K={n + 5} clusters is impossible for {n} lesions" in err
    emb = pd.read_parquet(run / "embeddings.parquet")
    emb.loc[3, "e7"] = np.nan
    emb.to_parquet(run / "embeddings.parquet")
    code, _, err = cli("mine", "--run", run, "--rounds", "0", "--no-progress")
    assert code == 2 and emb["lesion_id"].iloc[3] in err and "NaN" in err
    assert (run / "pseudo_labels.parquet").read_bytes() == before
    code, _, err = cli("mine", "--run", tmp_path / "nowhere")
    assert code == 2 and "not a run directory" in err


def test_embed_bad_input(tmp_path_factory, tmp_path):
    demo = session_demo(tmp_path_factory)
    df = read_manifest(demo["manifest"])
    # a one-lesion manifest
    csv = pd.read_csv(demo["csv"])
    one = tmp_path / "one"
    one.mkdir()
    csv.iloc[:1].to_csv(one / "DL_info.csv", index=False)
    write_manifest(one / "DL_info.csv", one / "m.parquet", images_root=demo["csv"].parent / "Images_png")
    code, _, err = cli("embed", one / "m.parquet", "--run", tmp_path / "r1", "--no-progress")
    assert code == 2 and "1 lesion(s); training an embedding needs at least 3" in err
    assert not (tmp_path / "r1").exists()
    # a manifest without images
    noimg = tmp_path / "noimg.parquet"
    shutil.copy(demo["csv"], tmp_path / "DL_info.csv")
    write_manifest(tmp_path / "DL_info.csv", noimg)
    code, _, err = cli("embed", noimg, "--run", tmp_path / "r2", "--no-progress")
    assert code == 2 and "no images folder" in err
    assert not (tmp_path / "r2" / "embeddings.parquet").exists()
    # a checkpoint of another architecture
    from torchvision.models import resnet18

    ckpt = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), ckpt)
    code, _, err = cli("embed", demo["manifest"], "--run", tmp_path / "r3", "--epochs", "1",
                       "--pretrained", ckpt, "--no-progress")
    assert code == 2 and "another architecture" in err and "resnet18.pth" in err
    assert not (tmp_path / "r3" / "embedder.pt").exists()
    assert len(df) >= 3


def test_evaluate_needs_a_run_or_manifest(tmp_path):
    code, _, err = cli("evaluate", "--run", tmp_path / "nothing")
    assert code == 2 and "--manifest" in err


def test_evaluate_metadata_only_on_real_test_split(real_dir, tmp_path):
    manifest = tmp_path / "real_test.parquet"
    code, _, err = cli("manifest", real_dir / "DL_info_test.csv", "--out", manifest)
    assert code == 0, err
    code, out, err = cli("evaluate", "--manifest", manifest, "--run", tmp_path / "run",
                         "--no-progress")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    acc = metrics["classification"]["location_only_accuracy"]
    assert 0.5 < acc < 0.7, acc  # the paper: 0.597
    assert metrics["classification"]["paper_location_only_accuracy"] == 0.597
    assert "embedding_accuracy" not in metrics["classification"]
    assert "skipped: classification.embedding_accuracy" in out
    assert "metadata only" in out
    assert metrics["evaluation"]["n_labelled"] == 4927


def test_embed_samples_by_corrected_labels_outside_test(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    df = read_manifest(made["manifest"])
    roles = protocol_split(df["patient_index"].to_numpy())
    ids = df["lesion_id"].astype(str).to_numpy()
    train_id = ids[roles != "test"][0]
    test_id = ids[roles == "test"][0]
    code, _, err = cli("embed", made["manifest"], "--run", run, "--epochs", "1",
                       "--labels-from-store", "--no-progress")
    assert code == 2 and "no label store" in err
    assert cli("labels", "init", "--run", run)[0] == 0
    code, _, err = cli("labels", "relabel", "--run", run, "--lesions", f"{train_id},{test_id}",
                       "--label", "kidney", "--user", "alice")
    assert code == 0, err
    code, out, err = cli("embed", made["manifest"], "--run", run, "--epochs", "1",
                         "--labels-from-store", "--no-progress")
    assert code == 0, err
    assert "+ 1 corrected labels" in out  # the test lesion's correction is not used
    rec = json.loads((run / "embedder.json").read_text())["training"]
    assert rec["store_labels_used"] == 1
    assert json.loads((run / "metrics.json").read_text())["embedding"]["store_labels_used"] == 1


def test_pseudo_labels_never_give_a_test_lesion_its_type(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    df = read_manifest(made["manifest"])
    code, out, err = cli("embed", made["manifest"], "--run", run, "--epochs", "1",
                         "--use-pseudo-labels", "--no-progress")
    assert code == 0, err
    roles = protocol_split(df["patient_index"].to_numpy())
    known = np.isin(roles, ["seed", "val"]) & (df["coarse_type"].to_numpy() >= 1)
    used = json.loads((run / "metrics.json").read_text())["embedding"]["pseudo_labels_used"]
    # every lesion has a pseudo-label; only those outside the test role, without a type, count
    assert used == int(((roles != "test") & ~known).sum()) > 0


def test_embed_hold_out_never_lends_the_held_out_types(made, tmp_path):
    """``embed --hold-out test``: no lesion of the official test split lends the sampler a type
    (scrambling those types gives the sampler the same types), while without it the test-split
    lesions of the protocol's seed and val roles do."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deeplesion_lab.lesion_types import SPLIT_CODES

    df = read_manifest(made["manifest"])
    roles = protocol_split(df["patient_index"].to_numpy())
    test = (df["split"] == SPLIT_CODES["test"]).to_numpy()
    typed = df["coarse_type"].to_numpy() >= 1
    lent = (roles != "test") & typed
    assert (lent & test).any()  # the data can show the difference

    def embed(manifest, name, *extra):
        code, out, err = cli("embed", manifest, "--run", tmp_path / name, "--epochs", "0",
                             "--no-progress", *extra)
        assert code == 0, err
        return (json.loads((tmp_path / name / "embedder.json").read_text())["training"],
                json.loads((tmp_path / name / "metrics.json").read_text())["embedding"])

    rec, met = embed(made["manifest"], "held", "--hold-out", "test")
    assert rec["hold_out"] == "test" and rec["sampler_types"] == int((lent & ~test).sum())
    assert met["hold_out"] == "test" and met["n_types_held_out"] == int((lent & test).sum())
    rec_all, met_all = embed(made["manifest"], "all")
    assert rec_all["sampler_types"] == int(lent.sum()) and "hold_out" not in rec_all
    assert met_all["n_types_held_out"] == 0 and rec_all["types_hash"] != rec["types_hash"]

    table = pq.read_table(made["manifest"])
    sc = table.to_pandas()
    flip = test & typed
    sc.loc[flip, "coarse_type"] = sc.loc[flip, "coarse_type"] % 8 + 1
    scrambled = tmp_path / "scrambled.parquet"
    pq.write_table(pa.Table.from_pandas(sc, preserve_index=False)
                   .replace_schema_metadata(table.schema.metadata), scrambled)
    rec_sc, _ = embed(scrambled, "scrambled", "--hold-out", "test")
    assert rec_sc["types_hash"] == rec["types_hash"]
    assert embed(scrambled, "scrambled_all")[0]["types_hash"] != rec_all["types_hash"]

    code, _, err = cli("embed", made["manifest"], "--run", tmp_path / "bad", "--hold-out",
                       "tset", "--no-progress")
    assert code != 0 and "tset" in err and "--hold-out" in err
    assert not (tmp_path / "bad" / "embedder.pt").exists()
