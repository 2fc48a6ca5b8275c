"""Lesion patches, the embedding network, sequential sampling and the LesionEmbedder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from embedding_fixtures import session_demo, session_patches

from deeplesion_lab.embedding import (
    CheckpointError,
    EmbeddingNet,
    LesionEmbedder,
    PatchConfig,
    SequentialSampler,
    build_patches,
    load_pretrained,
    sequential_triplet_loss,
)
from deeplesion_lab.embedding.embedder import _ids_hash
from deeplesion_lab.errors import LabError
from deeplesion_lab.manifest import read_manifest

torch.set_num_threads(1)  # the test machine's 2 cores are shared


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return session_demo(tmp_path_factory)


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    return session_patches(tmp_path_factory)


@pytest.fixture(scope="module")
def small_patches(patches):
    return patches.subset(np.arange(min(len(patches), 16)))


# patches ------------------------------------------------------------------------------------
def test_patches_shape_range_and_box_inside(patches, demo):
    df = read_manifest(demo["manifest"])
    assert len(patches) == len(df)
    assert patches.patches.dtype == np.uint8
    assert patches.patches.shape[1:] == (3, 64, 64)
    assert list(patches.lesion_ids) == df["lesion_id"].astype(str).tolist()
    b = patches.boxes
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (b >= 0).all() and (b <= 64).all()
    # margin 0.5: the box's centre is the patch centre and its longer side is half the patch
    centre = (b[:, :2] + b[:, 2:]) / 2
    np.testing.assert_allclose(centre, 32.0, atol=3.0)  # rounding of small crops
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    assert (side[side > 20] <= 33.0).all()
    # the patches hold real image content (several intensities, not one fill value)
    assert all(len(np.unique(p)) > 10 for p in patches.patches[:5])
    np.testing.assert_allclose(
        patches.sizes_mm,
        df["long_diameter_px"].to_numpy() * df["spacing_x"].to_numpy(),
    )


def test_patch_cache_is_reused_and_resumes(demo, tmp_path):
    df = read_manifest(demo["manifest"]).iloc[:10]
    cache = tmp_path / "cache"
    a = build_patches(df, PatchConfig(), cache_dir=cache, chunk_size=4)
    files = sorted(cache.glob("patches-*.npz"))
    assert len(files) == 3  # 4 + 4 + 2 lesions
    # the cache is what is read: a marked chunk comes back marked
    with np.load(files[0]) as z:
        marked = {"patches": np.zeros_like(z["patches"]) + 7, "boxes": z["boxes"]}
    np.savez(files[0], **marked)
    b = build_patches(df, PatchConfig(), cache_dir=cache, chunk_size=4)
    from_cache = (b.patches == 7).all(axis=(1, 2, 3))
    assert from_cache.sum() == len(marked["patches"])
    np.testing.assert_array_equal(b.patches[~from_cache], a.patches[~from_cache])
    # a removed chunk is rebuilt identical to the first build
    for f in cache.glob("patches-*.npz"):
        f.unlink()
    c = build_patches(df, PatchConfig(), cache_dir=cache, chunk_size=4)
    np.testing.assert_array_equal(a.patches, c.patches)
    np.testing.assert_array_equal(a.boxes, c.boxes)


def test_context_channels_are_neighbouring_slices(demo):
    df = read_manifest(demo["manifest"]).iloc[:3]
    ps = build_patches(df, PatchConfig(channels="context", n_slices=3))
    assert ps.patches.shape == (3, 3, 64, 64)
    # neighbouring slices differ from the key slice but resemble it
    key, up = ps.patches[:, 1].astype(float), ps.patches[:, 0].astype(float)
    assert not np.array_equal(key, up)
    assert np.corrcoef(key.ravel(), up.ravel())[0, 1] > 0.5


def test_min_field_of_view_keeps_surroundings(demo, patches):
    df = read_manifest(demo["manifest"]).iloc[:8]
    wide = build_patches(df, PatchConfig(min_fov_mm=120.0))
    side = lambda b: np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # noqa: E731
    long_mm = df["long_diameter_px"].to_numpy() * df["spacing_x"].to_numpy()
    small = long_mm < 30
    assert small.any()
    # small lesions now fill less of the patch: more surrounding anatomy around them
    assert (side(wide.boxes)[small] < side(patches.boxes[:8])[small] * 0.8).all()
    np.testing.assert_allclose((wide.boxes[:, :2] + wide.boxes[:, 2:]) / 2, 32.0, atol=3.0)


def test_patch_errors(demo, tmp_path):
    df = read_manifest(demo["manifest"])
    with pytest.raises(LabError, match="no lesions"):
        build_patches(df.iloc[:0])
    bad = df.iloc[:3].copy()
    bad.loc[bad.index[1], "has_image"] = False
    with pytest.raises(LabError, match="no key slice"):
        build_patches(bad)
    nan = df.iloc[:3].copy()
    nan.loc[nan.index[2], "location_y"] = np.nan
    with pytest.raises(LabError, match=str(nan["lesion_id"].iloc[2])):
        build_patches(nan)
    with pytest.raises(LabError, match="channels"):
        PatchConfig(channels="rgb")
    with pytest.raises(LabError, match="odd"):
        PatchConfig(n_slices=2)


# network ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["small", "resnet18"])
def test_network_unit_embeddings_pooled_around_box(arch):
    torch.manual_seed(0)
    net = EmbeddingNet(3, 128, arch).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        e = net(x)
        assert e.shape == (4, 128)
        np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-5)
        # the box matters: pooling elsewhere gives another embedding
        corner = torch.tensor([[0.0, 0.0, 20.0, 20.0]]).expand(4, 4)
        assert (net(x, corner) - e).abs().max() > 1e-3


def test_network_location_input():
    torch.manual_seed(0)
    net = EmbeddingNet(3, 32, "small", n_meta=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a = net(x, meta=torch.zeros(2, 3))
        b = net(x, meta=torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, -0.4]]))
        assert (a - b).abs().max() > 1e-3
        with pytest.raises(LabError, match="metadata input"):
            net(x)


def test_image_only_embedder_ignores_metadata(small_patches, tmp_path):
    emb = LesionEmbedder(use_metadata=False, num_threads=1).initialize(small_patches)
    moved = small_patches.subset(np.arange(len(small_patches)))
    moved.locations = moved.locations[::-1].copy()
    np.testing.assert_allclose(emb.transform(small_patches), emb.transform(moved), atol=1e-6)
    with_loc = LesionEmbedder(num_threads=1).initialize(small_patches)
    assert np.abs(with_loc.transform(small_patches) - with_loc.transform(moved)).max() > 1e-4
    back = LesionEmbedder.load(emb.save(tmp_path / "img.pt"))
    assert back.use_metadata is False and back.net_.n_meta == 0


def test_network_rejects_unknown_arch():
    with pytest.raises(LabError, match="unknown embedding architecture"):
        EmbeddingNet(arch="vgg99")


# sampling -----------------------------------------------------------------------------------
def _meta(n=200, seed=0):
    rng = np.random.default_rng(seed)
    types = rng.integers(1, 5, n)
    centres = {1: (0.2, 0.2, 0.2), 2: (0.8, 0.2, 0.5), 3: (0.2, 0.8, 0.8), 4: (0.8, 0.8, 0.2)}
    loc = np.array([centres[t] for t in types]) + rng.normal(0, 0.08, (n, 3))
    size = np.exp(rng.normal(3.0, 0.5, n))
    return loc, size, types


def test_sequential_sampling_order():
    loc, size, types = _meta()
    seq = SequentialSampler(n_neighbors=20, seed=0).fit(loc, size, types).sample()
    a, b, c, d, e = seq.T
    assert (seq[:, 0] == np.arange(len(loc))).all()
    assert len(np.unique(seq[:, 1:] == seq[:, :1])) == 1  # never the anchor itself
    # type first: B, C, D share the anchor's type, E does not
    for x in (b, c, d):
        assert (types[x] == types[a]).all()
    assert (types[e] != types[a]).all()
    # then location: B and C are nearer than D
    dist = lambda u: np.linalg.norm(loc[u] - loc[a], axis=1)  # noqa: E731
    assert (dist(b) <= dist(d) + 1e-12).mean() > 0.95
    assert (dist(c) <= dist(d) + 1e-12).mean() > 0.95
    # then size: B is closer in size than C
    ls = np.log(size)
    assert (np.abs(ls[b] - ls[a]) <= np.abs(ls[c] - ls[a]) + 1e-12).all()


def test_sampling_without_types_uses_location():
    loc, size, _ = _meta()
    seq = SequentialSampler(seed=1).fit(loc, size, None).sample()
    a, b, _, d, e = seq.T
    dist = lambda u: np.linalg.norm(loc[u] - loc[a], axis=1)  # noqa: E731
    assert np.mean(dist(b)) < np.mean(dist(d)) < np.mean(dist(e)) + 1e-9
    # different epochs, different draws; same epoch, same draws
    s = SequentialSampler(seed=1).fit(loc, size, None)
    assert not np.array_equal(s.sample(epoch=0), s.sample(epoch=1))
    np.testing.assert_array_equal(s.sample(epoch=3), s.sample(epoch=3))


def test_sampling_bad_input():
    loc, size, types = _meta(10)
    with pytest.raises(LabError, match="at least 3"):
        SequentialSampler().fit(loc[:2], size[:2])
    loc[4, 1] = np.nan
    with pytest.raises(LabError, match="lesion 4"):
        SequentialSampler().fit(loc, size)


def test_sequential_triplet_loss():
    # A, then lesions at increasing distance: no loss; reversed: positive loss
    pts = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    pts = torch.nn.functional.normalize(pts, dim=1)
    assert float(sequential_triplet_loss(pts, 5, margin=0.01)) == 0.0
    rev = pts[[0, 4, 3, 2, 1]]
    assert float(sequential_triplet_loss(rev, 5, margin=0.01)) > 1.0


# embedder -----------------------------------------------------------------------------------
def test_embedder_fit_transform_save_load(small_patches, tmp_path):
    emb = LesionEmbedder(epochs=2, batch_size=4, seed=3, num_threads=1).fit(small_patches)
    assert len(emb.history_) == 2 and all(np.isfinite(h["triplet_loss"]) for h in emb.history_)
    X = emb.transform(small_patches)
    assert X.shape == (len(small_patches), 128) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    untrained = LesionEmbedder(seed=3, num_threads=1).initialize(small_patches)
    untrained = untrained.transform(small_patches)
    assert np.abs(untrained - X).max() > 1e-3  # training changed the network
    path = emb.save(tmp_path / "embedder.pt")
    rec = json.loads((tmp_path / "embedder.json").read_text())
    assert rec["seed"] == 3 and rec["data_hash"] == emb.data_hash_
    assert rec["versions"]["torch"] == torch.__version__
    assert rec["patch_config"]["size"] == 64 and len(rec["history"]) == 2
    back = LesionEmbedder.load(path)
    np.testing.assert_allclose(back.transform(small_patches), X, atol=1e-6)
    assert back.model_hash() == emb.model_hash()


def test_type_loss_and_type_propagation(small_patches):
    types = np.full(len(small_patches), -1)
    types[:4], types[4:8] = 2, 5  # half the lesions of known type
    emb = LesionEmbedder(epochs=3, batch_size=4, seed=1, num_threads=1, type_weight=1.0,
                         propagate_types=1, propagate_min_share=0.5,
                         propagate_neighbors=2).fit(small_patches, y=types)
    assert all(np.isfinite(h["type_loss"]) for h in emb.history_)
    # the sampler was refitted with propagated types after the first and second epochs
    assert [("propagated_types" in h) for h in emb.history_] == [False, True, True]
    filled = emb._propagated_types(small_patches, types)
    assert (filled[:8] == types[:8]).all()  # given types are never changed
    assert set(np.unique(filled[8:])) <= {-1, 2, 5}
    # a lesion takes a type only when its nearest known-type neighbours agree enough
    strict = LesionEmbedder(**{**emb.get_params(), "propagate_min_share": 1.01})
    strict.net_, strict.patch_config_ = emb.net_, emb.patch_config_
    assert (strict._propagated_types(small_patches, types)[8:] == -1).all()
    # without known types the type loss is off, and training still runs
    none = LesionEmbedder(epochs=1, batch_size=4, num_threads=1, type_weight=1.0).fit(
        small_patches, y=np.full(len(small_patches), -1))
    assert "type_loss" not in none.history_[0]


def test_embedder_is_deterministic(small_patches):
    a = LesionEmbedder(epochs=1, batch_size=4, seed=5, num_threads=1).fit(small_patches)
    b = LesionEmbedder(epochs=1, batch_size=4, seed=5, num_threads=1).fit(small_patches)
    assert a.model_hash() == b.model_hash()


def test_extraction_resumes_from_chunks(small_patches, tmp_path):
    emb = LesionEmbedder(seed=0, num_threads=1).initialize(small_patches)
    full = emb.transform(small_patches)
    rd = tmp_path / "resume"
    emb.transform(small_patches, resume_dir=rd, chunk_size=5)
    chunks = sorted(rd.glob("emb-*.npy"))
    assert len(chunks) == int(np.ceil(len(small_patches) / 5))
    # a finished chunk is read back, not recomputed; find the first chunk by its file name
    # (model hash and the hash of its lesion ids), not by its values: other batch shapes take
    # other CPU kernel paths, so a chunk differs from the full run by about 1e-7
    first = rd / f"emb-{emb.model_hash()}-{_ids_hash(small_patches.lesion_ids[:5])}.npy"
    assert first in chunks
    np.testing.assert_allclose(np.load(first), full[:5], atol=1e-6)
    np.save(first, np.full((5, 128), 0.5, dtype=np.float32))
    again = emb.transform(small_patches, resume_dir=rd, chunk_size=5)
    assert (again[:5] == 0.5).all()
    np.testing.assert_allclose(again[5:], full[5:], atol=1e-6)


def test_fit_needs_three_lesions(small_patches):
    with pytest.raises(LabError, match="at least 3"):
        LesionEmbedder(epochs=1, num_threads=1).fit(small_patches.subset([0, 1]))
    with pytest.raises(LabError, match="not fitted"):
        LesionEmbedder(num_threads=1).transform(small_patches)
    with pytest.raises(LabError, match="PatchSet"):
        LesionEmbedder(num_threads=1).fit(np.zeros((4, 3, 64, 64)))


@pytest.mark.parametrize(
    ("param", "value", "allowed"),
    [("batch_size", 1, r"range \[2, inf\)"), ("micro_batches", 0, r"range \[1, inf\)"),
     ("arch", "huge", "among"), ("epochs", -1, r"range \[0, inf\)")],
)
def test_fit_refuses_bad_parameters(small_patches, param, value, allowed):
    # validated in fit, scikit-learn style, with the parameter named; never clamped silently
    emb = LesionEmbedder(num_threads=1, **{param: value})
    with pytest.raises(LabError, match=rf"'{param}' parameter of LesionEmbedder.*{allowed}.*Got"):
        emb.fit(small_patches)
    assert not hasattr(emb, "net_")


def test_pretrained_local_checkpoint(small_patches, tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(11)
    ref = resnet18(weights=None)  # stands in for ImageNet weights on the user's disk
    ckpt = tmp_path / "resnet18-local.pth"
    torch.save(ref.state_dict(), ckpt)
    emb = LesionEmbedder(arch="resnet18", pretrained=str(ckpt), num_threads=1).initialize(small_patches)
    got = emb.net_.backbone.layer3[0].conv1.weight
    torch.testing.assert_close(got, ref.layer3[0].conv1.weight)
    assert emb.transform(small_patches).shape == (len(small_patches), 128)
    # the same file for the small backbone: another architecture
    with pytest.raises(CheckpointError, match="another architecture"):
        LesionEmbedder(arch="small", pretrained=str(ckpt), num_threads=1).initialize(small_patches)
    # a small backbone's own weights load into a small network
    small = EmbeddingNet(3, 128, "small")
    path = tmp_path / "small.pth"
    torch.save(small.backbone.state_dict(), path)
    other = EmbeddingNet(3, 128, "small")
    loaded = load_pretrained(other, path)
    assert len(loaded) == len(small.backbone.state_dict())
    torch.testing.assert_close(other.backbone.block2[1][0].weight, small.backbone.block2[1][0].weight)


def test_bad_checkpoints(small_patches, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        LesionEmbedder.load(junk)
    with pytest.raises(CheckpointError, match="not found"):
        LesionEmbedder.load(tmp_path / "missing.pt")
    emb = LesionEmbedder(embed_dim=64, num_threads=1).initialize(small_patches)
    path = emb.save(tmp_path / "e.pt")
    obj = torch.load(path, weights_only=True)
    obj["params"]["embed_dim"] = 128  # the record says another architecture than the weights
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="another architecture"):
        LesionEmbedder.load(path)
    plain = tmp_path / "plain.pt"
    torch.save(emb.net_.backbone.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a lesion-embedder checkpoint"):
        LesionEmbedder.load(plain)


# context crop (issue 15) ---------------------------------------------------------------------
def test_context_crop_has_a_fixed_physical_field_of_view(demo):
    df = read_manifest(demo["manifest"]).iloc[:6]
    ps = build_patches(df, PatchConfig(context_mm=80.0))
    assert ps.context.shape == (6, 3, 32, 32) and ps.context.dtype == np.uint8
    assert all(len(np.unique(c)) > 10 for c in ps.context)
    # the same lesion drawn with a twice larger box (same centre): its lesion patch zooms out,
    # its context crop (80 mm whatever the lesion's size) stays the same
    big = df.copy()
    w = (big["bbox_x2"] - big["bbox_x1"]) / 2
    h = (big["bbox_y2"] - big["bbox_y1"]) / 2
    big["bbox_x1"] -= w
    big["bbox_x2"] += w
    big["bbox_y1"] -= h
    big["bbox_y2"] += h
    pb = build_patches(big, PatchConfig(context_mm=80.0))
    assert np.abs(pb.patches.astype(int) - ps.patches.astype(int)).mean() > 5
    assert np.abs(pb.context.astype(int) - ps.context.astype(int)).mean() < 2
    # a wider field of view sees more: the 80 mm crop differs from a 160 mm one
    wide = build_patches(df, PatchConfig(context_mm=160.0))
    assert np.abs(wide.context.astype(int) - ps.context.astype(int)).mean() > 5
    assert build_patches(df, PatchConfig()).context is None
    with pytest.raises(LabError, match="context_mm"):
        PatchConfig(context_mm=-1.0)


def test_context_crop_is_cached_and_old_cache_names_stay(demo, tmp_path):
    import hashlib

    df = read_manifest(demo["manifest"]).iloc[:5]
    a = build_patches(df, PatchConfig(context_mm=80.0), cache_dir=tmp_path, chunk_size=2)
    f = sorted(tmp_path.glob("patches-*.npz"))
    assert len(f) == 3
    with np.load(f[0]) as z:
        np.savez(f[0], patches=z["patches"], boxes=z["boxes"],
                 context=np.full_like(z["context"], 9))
    b = build_patches(df, PatchConfig(context_mm=80.0), cache_dir=tmp_path, chunk_size=2)
    assert (b.context[:2] == 9).all()
    np.testing.assert_array_equal(a.context[2:], b.context[2:])
    # without a context crop the cache files keep the names they had before it existed
    old = {"size": 64, "channels": "context", "n_slices": 3, "slice_mm": 2.0, "window": "wide",
           "margin": 0.5, "min_fov_mm": 0.0}
    expected = hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:10]
    assert PatchConfig().key() == expected
    assert PatchConfig(context_mm=80.0).key() != expected


def test_embedder_context_branch_uses_the_crop_and_round_trips(demo, tmp_path):
    df = read_manifest(demo["manifest"]).iloc[:16]
    ps = build_patches(df, PatchConfig(context_mm=80.0))
    emb = LesionEmbedder(epochs=1, batch_size=4, num_threads=1).fit(ps)
    assert emb.net_.context_channels == 3
    e = emb.transform(ps)
    assert e.shape == (16, 128)
    other = ps.subset(np.arange(16))
    other.context = other.context[::-1].copy()
    assert np.abs(emb.transform(other) - e).max() > 1e-4  # the crop is an input
    back = LesionEmbedder.load(emb.save(tmp_path / "ctx.pt"))
    assert back.patch_config_.context_mm == 80.0
    np.testing.assert_allclose(back.transform(ps), e, atol=1e-5)
    with pytest.raises(LabError, match="context"):
        emb.transform(build_patches(df, PatchConfig()))
    # a checkpoint from before the context crop (no context_mm in its patch config) loads
    plain = LesionEmbedder(num_threads=1).initialize(build_patches(df, PatchConfig()))
    path = plain.save(tmp_path / "old.pt")
    state = torch.load(path, weights_only=True)
    for k in ("context_mm", "context_size"):
        state["patch_config"].pop(k)
    torch.save(state, path)
    old = LesionEmbedder.load(path)
    assert old.patch_config_.context_mm == 0.0 and old.net_.context_channels == 0


def test_contrastive_loss_trains(small_patches):
    emb = LesionEmbedder(epochs=1, batch_size=4, num_threads=1, contrastive_weight=1.0)
    emb.fit(small_patches)
    assert np.isfinite(emb.history_[0]["triplet_loss"])
    assert np.isfinite(emb.history_[0]["contrastive_loss"])
