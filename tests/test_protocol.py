"""The published protocol (dvce.protocol): each metric against an independent computation, the
networks' loaders on random-weight instances, dlib on the seed's CelebA-HQ faces, the CLI."""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dvce.protocol import metrics as M


# ------------------------------------------------------------------------------ FID / sFID
def _sqrtm_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_reference(mu1, s1, mu2, s2):
    """Tr((s1^½ s2 s1^½)^½) route, symmetric eigendecompositions only (independent of eigvals)."""
    r = _sqrtm_psd(s1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(_sqrtm_psd(r @ s2 @ r)))


def test_frechet_closed_form_diagonal_and_general():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    # commuting (diagonal) covariances: |mu1 - mu2|² + Σ (sd1 - sd2)²
    expected = 1 + 0 + 4 + (1 + 1 + 0)
    assert M.frechet_distance(mu1, np.diag(sd1 ** 2), mu2, np.diag(sd2 ** 2)) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(_frechet_reference(m1, s1, m2, s2),
                                                               rel=1e-6)


def test_fid_of_samples_matches_the_gaussians_and_is_zero_on_itself():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, size=(40000, 3))
    y = rng.normal([1, 0, 0], [2, 1, 1], size=(40000, 3))
    assert M.fid(x, y) == pytest.approx(1 + 1, abs=0.06)  # |Δμ|² + (2 − 1)²
    z = rng.normal(size=(200, 16))
    assert abs(M.fid(z, z)) < 1e-6
    assert np.isnan(M.fid(z[:1], z))  # one sample has no covariance


def test_sfid_split_is_seeded_disjoint_and_averages_both_directions():
    a, b = M.sfid_split(11, seed=3)
    a2, _ = M.sfid_split(11, seed=3)
    assert len(a) == len(b) == 5 and not set(a) & set(b) and (a == a2).all()
    rng = np.random.default_rng(2)
    of, cf = rng.normal(size=(40, 4)), rng.normal(1, 1, size=(40, 4))
    ok = np.ones(40, bool)
    ok[:5] = False
    s = M.sfid(of, cf, ok, seed=0)
    ha, hb = M.sfid_split(40, 0)
    manual = [M.fid(of[ha], cf[hb][ok[hb]]), M.fid(of[hb], cf[ha][ok[ha]])]
    assert s["halves"] == pytest.approx(manual) and s["value"] == pytest.approx(np.mean(manual))


# -------------------------------------------------------------------------------- FVA / FS
def test_fva_fs_identical_and_unrelated_embeddings():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(50, 512))
    same = M.fva_fs(e, e * 2.0)  # a scaled copy: cosine 1
    assert same["fva"] == 1.0 and same["fs"] == pytest.approx(1.0)
    other = M.fva_fs(e, rng.normal(size=(50, 512)))  # independent high-dimensional vectors: cos≈0
    assert other["fva"] == 0.0 and abs(other["fs"]) < 0.1
    d = M.fva_fs(e, e + 0.01, metric="euclidean", threshold=0.6)
    assert d["fva"] == 1.0 and d["mean_distance"] == pytest.approx(0.01 * np.sqrt(512))


# ---------------------------------------------------------------------------------- MNAC / CD
def test_mnac_on_hand_built_oracle_outputs():
    before = np.full((3, 5), 0.2)
    after = before.copy()
    after[0, [0, 2]] = 0.9          # pair 0: query (0) and attribute 2 changed
    after[1, 0] = 0.8               # pair 1: only the query
    after[2, [1, 3, 4]] = 0.7       # pair 2: three others, not the query
    counts = M.attributes_changed(before, after, query=0)
    assert counts.tolist() == [1, 0, 3]
    assert M.attributes_changed(before, after, 0, include_query=True).tolist() == [2, 1, 3]
    assert M.attributes_changed(before, after, 0, valid=[0, 1, 2]).tolist() == [1, 0, 1]
    m = M.mnac(before, after, 0)
    assert m["value"] == pytest.approx(4 / 3) and m["with_query"] == pytest.approx(2.0)


def _pearson(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    da, db = a - a.mean(), b - b.mean()
    den = np.sqrt((da ** 2).sum() * (db ** 2).sum())
    return 0.0 if den == 0 else float((da * db).sum() / den)


def test_cd_on_hand_built_oracle_outputs():
    rng = np.random.default_rng(4)
    q = rng.choice([-1, 1], size=400)
    labels = np.stack([q, -q, rng.choice([-1, 1], size=400), np.full(400, -1)], 1)
    corrs = M.label_correlations(labels, 0)
    assert corrs[0] == pytest.approx(1) and corrs[1] == pytest.approx(-1)
    assert abs(corrs[2]) < 0.15 and corrs[3] == 0  # a constant attribute has no correlation
    # oracle decisions: both directions of the query; attribute 1 follows it inversely in half
    pb = np.array([[0.1, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1],
                   [0.9, 0.1, 0.9, 0.1]])
    pa = np.array([[0.9, 0.1, 0.1, 0.1], [0.1, 0.9, 0.1, 0.1], [0.9, 0.1, 0.9, 0.1],
                   [0.1, 0.1, 0.9, 0.1]])
    deltas = (pa > 0.5).astype(float) - (pb > 0.5)
    ours = [_pearson(deltas[:, i], deltas[:, 0]) for i in range(4)]
    expected = sum(abs(o - c) for o, c in zip(ours, corrs))
    cd = M.correlation_difference(pb, pa, 0, corrs)
    assert cd["value"] == pytest.approx(expected) and cd["query_delta_constant"] is False
    # one direction only: Δ_query constant, every correlation undefined → CD = Σ|corr_train|
    one = M.correlation_difference(pb[[0, 2]], pa[[0, 2]], 0, corrs)
    assert one["query_delta_constant"] and one["value"] == pytest.approx(np.abs(corrs).sum())


# ------------------------------------------------------------------------------------- COUT
def test_cout_on_a_linear_classifier_matches_an_explicit_insertion_curve():
    torch.manual_seed(0)
    h = w = 10
    x = torch.rand(2, 3, h, w) * 2 - 1
    # distinct per-pixel changes so the insertion order has no ties
    cf = x + torch.linspace(0.01, 1.0, h * w).view(1, 1, h, w) * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    wgt = torch.randn(3, h, w) * 0.2

    def logit_fn(z):
        return (z * wgt).flatten(1).sum(1) + 0.1

    got = M.cout(logit_fn, x, cf, steps=7)
    # independent: per pixel the logit change is Σ_c w·(cf − x); insert in order of Σ_c |cf − x|
    step = (h * w) // 7
    for i in range(2):
        xi, ci, W = x[i].numpy(), cf[i].numpy(), wgt.numpy()
        contrib = ((ci - xi) * W).sum(0).ravel()
        order = np.argsort(-np.abs(ci - xi).sum(0).ravel(), kind="stable")
        z0 = float((xi * W).sum() + 0.1)
        sign = 1.0 if z0 > 0 else -1.0
        zs = [z0] + [z0 + contrib[order[:k + step]].sum() for k in range(0, h * w, step)]
        c = 1 / (1 + np.exp(-sign * np.array(zs)))
        trap = lambda v: (v[0] / 2 + v[1:-1].sum() + v[-1] / 2) * step / (h * w)  # noqa: E731
        assert got["per_pair"][i] == pytest.approx(trap(1 - c) - trap(c), abs=1e-5)
    assert got["c_curve"].shape == (2, 1 + int(np.ceil(h * w / step)))


def test_cout_of_an_unchanged_pair_is_zero_when_undecided():
    x = torch.zeros(1, 3, 8, 8)
    out = M.cout(lambda z: z.flatten(1).sum(1), x, x.clone())
    assert out["per_pair"][0] == pytest.approx(0.0)  # c = c' = 0.5 all along


def test_flip_rate():
    assert M.flip_rate([2.0, -1.0, 0.5, -0.2], [1, 0, 0, 1]) == 0.5


# --------------------------------------------------------------------------- network loaders
def test_missing_weight_files_are_named(tmp_path):
    from dvce.protocol.features import face_network, fid_network, oracle_network
    from dvce.protocol.nets import WeightsError
    for call, spec in ((fid_network, "inception:"), (face_network, "vggface2:"),
                       (oracle_network, "steex:"), (fid_network, "torchvision:resnet18:")):
        missing = tmp_path / "absent.pth"
        with pytest.raises(WeightsError, match="absent.pth"):
            call(spec + str(missing))
    with pytest.raises(ValueError, match="unknown FID feature network"):
        fid_network("clip:x")


def test_fid_inception_loads_a_pytorch_fid_state_dict(tmp_path):
    from dvce.protocol.nets import FIDInceptionV3, WeightsError
    torch.manual_seed(0)
    ref = FIDInceptionV3().eval()
    sd = ref.net.state_dict()
    # pytorch-fid's file is an Inception3 state dict with the TF graph's 1008 classes
    assert sd["fc.weight"].shape == (1008, 2048) and "Mixed_7c.branch_pool.conv.weight" in sd
    assert not any(k.startswith("AuxLogits") for k in sd)
    torch.save(sd, tmp_path / "pt_inception.pth")
    loaded = FIDInceptionV3.from_file(tmp_path / "pt_inception.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), loaded(x)
    assert a.shape == (2, 2048) and torch.allclose(a, b)
    bad = dict(sd)
    bad.pop("Mixed_5b.branch1x1.conv.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="missing"):
        FIDInceptionV3.from_file(tmp_path / "bad.pth")


def test_fid_inception_pools_as_the_tf_graph():
    """Mixed_7c max-pools and the other blocks average without padding (pytorch-fid's blocks)."""
    from dvce.protocol.nets import FIDInceptionV3
    net = FIDInceptionV3().net
    assert net.Mixed_7c.pool == "max" and net.Mixed_7b.pool == "avg"
    x = torch.zeros(1, 192, 5, 5)
    x[..., 0, 0] = 1.0
    blk = net.Mixed_5b
    seen = {}
    blk.branch_pool.register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        blk(x)
    assert seen["x"][0, 0, 0, 0] == pytest.approx(1 / 4)  # corner: 4 valid cells, padding not counted


def test_vggface2_loads_the_authors_pickle(tmp_path):
    from dvce.protocol.nets import VGGFace2ResNet50
    torch.manual_seed(0)
    ref = VGGFace2ResNet50().eval()
    weights = {k: v.numpy() for k, v in ref.state_dict().items() if "num_batches" not in k}
    assert "layer4.2.bn3.running_var" in weights and weights["fc.weight"].shape == (8631, 2048)
    with open(tmp_path / "resnet50_ft_weight.pkl", "wb") as fh:
        pickle.dump(weights, fh)
    loaded = VGGFace2ResNet50.from_file(tmp_path / "resnet50_ft_weight.pkl")
    ims = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    x = VGGFace2ResNet50.preprocess(ims)
    assert x.shape == (2, 3, 224, 224)
    # BGR order, VGGFace2 means subtracted, 0–255 scale
    assert float(x[0, 0].mean()) == pytest.approx(float(np.asarray(ims[0])[..., 2].mean()) - 91.4953,
                                                  abs=3)
    with torch.no_grad():
        a, b = ref(x), loaded(x)
    assert a.shape == (2, 2048) and torch.allclose(a, b)
    # Caffe style: the stride sits on the first 1×1 convolution of a bottleneck
    assert ref.layer2[0].conv1.stride == (2, 2) and ref.layer2[0].conv2.stride == (1, 1)


def test_steex_oracle_loads_its_checkpoint(tmp_path):
    from dvce.protocol.features import oracle_network
    from dvce.protocol.nets import SteexOracle
    torch.manual_seed(0)
    ref = SteexOracle().eval()
    sd = ref.state_dict()
    assert "feat_extract.conv5_3_1x1_increase_bn.running_var" in sd
    assert "feat_extract.conv3_1_1x1_proj.weight" in sd and "feat_extract.conv3_2_1x1_proj.weight" not in sd
    assert sd["classifier.weight"].shape == (40, 2048)
    torch.save({"model_state_dict": sd, "epoch": 3}, tmp_path / "checkpoint.tar")
    net = oracle_network(f"steex:{tmp_path / 'checkpoint.tar'}")
    ims = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    p = net(ims)
    x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad():
        assert np.allclose(p, ref(x).numpy(), atol=1e-6) and p.shape == (2, 40)
        mnac_net = oracle_network(f"steex-mnac:{tmp_path / 'checkpoint.tar'}")
        assert np.allclose(mnac_net(ims), ref((x - 0.5) / 0.5).numpy(), atol=1e-6)


def test_torchvision_features_from_a_local_state_dict(tmp_path):
    import torchvision
    from dvce.protocol.features import fid_network
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    net = fid_network(f"torchvision:resnet18:{tmp_path / 'r18.pth'}")
    ims = [np.zeros((48, 48, 3), np.uint8), np.full((48, 48, 3), 200, np.uint8)]
    assert net(ims).shape == (2, 512)


# ----------------------------------------------------------------------- face verification
def _degrade(im: np.ndarray, seed: int) -> np.ndarray:
    """JPEG at quality 40 plus Gaussian noise (σ = 4 grey levels)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=40)
    out = np.asarray(Image.open(buf).convert("RGB")).astype(float)
    out += np.random.default_rng(seed).normal(0, 4, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_dlib_fva_on_the_seed_celebahq_faces(shared_dir):
    pytest.importorskip("dlib")
    from dvce.protocol.features import DlibFaces, read_rgb_files
    files = sorted((shared_dir / "seed" / "celebahq" / "test_counterfactual").glob("*.png"))
    assert len(files) == 21
    ims = read_rgb_files(files)
    faces = DlibFaces()
    pairs = faces.pairs(ims, [_degrade(im, i) for i, im in enumerate(ims)])
    orig, degraded = pairs[:, :128], pairs[:, 128:]
    assert faces.not_found == 0
    assert M.fva_fs(orig, degraded, "euclidean", 0.6)["fva"] == 1.0
    # each image against every other person
    i, j = np.where(~np.eye(len(ims), dtype=bool))
    other = M.fva_fs(orig[i], orig[j], "euclidean", 0.6)
    assert other["n"] == 420 and other["fva"] <= 0.05
    # why the rule is Euclidean: dlib descriptors of different people still have cosine ≫ 0.5
    assert M.cosine_similarity(orig[i], orig[j]).mean() > 0.5


def test_oracle_face_rule_on_toy_faces(tmp_path):
    """Same face with its smile negated: same; different faces: mostly not (the toy world has
    few factors, so some different faces are near twins)."""
    import dataclasses
    from dvce.protocol.features import face_network
    from toyfaces.world import toy_classifier
    from toyfaces.render import render, sample_factors
    f = sample_factors(80, 123)
    a, b = render(f), render(dataclasses.replace(f, smile=-f.smile))
    net = face_network("oracle", oracle=str(toy_classifier("toy_oracle")), query=31)
    ea, eb = net(list(a)), net(list(b))
    metric, thr = net.rule
    assert M.fva_fs(ea, eb, metric, thr)["fva"] >= 0.95
    i, j = np.where(~np.eye(len(a), dtype=bool))
    assert M.fva_fs(ea[i], ea[j], metric, thr)["fva"] <= 0.10


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def toy_pairs_run(tmp_path_factory):
    """A run folder of perfect toy counterfactuals: each face rendered again with its smile
    negated (both directions), written through dvce.runfolder."""
    import dataclasses
    from classifier.images import save_image
    from dvce.runfolder import write_manifest, write_result, writing_item
    from toyfaces.render import render, sample_factors
    run = tmp_path_factory.mktemp("protocol_run")
    f = sample_factors(12, 77)
    a, b = render(f), render(dataclasses.replace(f, smile=-f.smile))
    for k in range(len(f)):
        target = int(f.smile[k] < 0)
        with writing_item(run, f"img{k}") as d:
            save_image(a[k], d / "original.png")
            save_image(b[k], d / "counterfactual.png")
            write_result(d, {"image": f"img{k}", "target": target, "flipped": k != 3,
                             "logit_after": (3.0 if target else -3.0) * (1 if k != 3 else -1),
                             "attribute": "Smiling", "classifier": "toy_resnet"})
    write_manifest(run, [{"image": f"img{k}", "status": "ok"} for k in range(len(f))])
    return run


def test_evaluate_protocol_full_cli_writes_every_metric_and_caches(toy_pairs_run, capsys):
    from ldvce.cli import main
    from toyfaces.world import TRAIN_DATA, toy_data
    attr = toy_data(TRAIN_DATA) / "CelebAMask-HQ-attribute-anno.txt"
    args = ["evaluate", str(toy_pairs_run), "--protocol", "full", "--oracle", "toy_oracle",
            "--train-attr-file", str(attr), "--device", "cpu"]
    assert main(args) in (0, None)
    m = json.loads((toy_pairs_run / "metrics.json").read_text())
    for k in ("fr", "fid", "sfid", "fva", "fs", "mnac", "cd", "cout"):
        assert m[k]["value"] is not None, k
        assert m[k].get("network"), k
    assert m["fr"]["value"] == pytest.approx(11 / 12) and m["fid"]["n_counterfactual"] == 11
    assert m["fva"]["value"] >= 0.9 and m["fva"]["n"] == 11
    assert m["mnac"]["attributes"] == 11  # the toy world's modelled attributes
    assert m["mnac"]["with_query"] >= m["mnac"]["value"]
    assert m["cout"]["n"] == 12 and -1 <= m["cout"]["value"] <= 1
    assert "flip_rate" in m and "ssim" in m  # the existing metrics are kept
    assert sum(m["computed"].values()) > 0
    # re-evaluation reads the cache: nothing recomputed, same numbers
    assert main(args) in (0, None)
    m2 = json.loads((toy_pairs_run / "metrics.json").read_text())
    assert sum(m2["computed"].values()) == 0 and m2["cout"]["computed"] == 0
    assert m2["fid"]["value"] == pytest.approx(m["fid"]["value"])
    capsys.readouterr()
    assert main(["evaluate", "--compare", str(toy_pairs_run)]) in (0, None)
    out = capsys.readouterr().out
    assert "| MaskDiME (published) | 2.51 | 18.1 | 100 |" in out
    assert f"| {toy_pairs_run.name} |" in out and "published: Inception-v3" in out


def test_evaluate_protocol_errors_name_the_problem(toy_pairs_run, tmp_path):
    from ldvce.cli import main
    with pytest.raises(SystemExit, match="nothere.pth"):
        main(["evaluate", str(toy_pairs_run), "--protocol", "full", "--oracle", "toy_oracle",
              "--fid-features", f"inception:{tmp_path / 'nothere.pth'}", "--no-cache"])
    with pytest.raises(SystemExit, match="no protocol metrics"):
        main(["evaluate", "--compare", str(tmp_path)])


@pytest.mark.integration
def test_bench_generate_protocol_full_writes_both_runs(tmp_path):
    from benchmarks.protocol import bench_protocol_toy
    from dvce.samplers import DEFAULT_METHOD
    r = bench_protocol_toy(n=2, out=tmp_path)
    assert set(r["runs"]) == {"seed", DEFAULT_METHOD}
    for v in r["runs"].values():
        m = json.loads((tmp_path / Path(v["run"]).name / "metrics.json").read_text())
        assert m["protocol"] == "full" and m["n_pairs"] == 2
        assert m["cd"]["query_delta_constant"] in (True, False)
