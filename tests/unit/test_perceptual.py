"""LPIPS, Inception features, FID and KID: our code against the libraries' own computation.

Random weights of the exact architectures are saved to files (nothing is downloaded: the tests make
torch.hub's downloader raise); the libraries load them their own way and must agree to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.utils.data import Dataset

from ddnm import perceptual
from ddnm.set_metrics import FeatureMoments, fid, frechet_distance, kid

# the lpips package itself still passes torchvision the deprecated `pretrained=`
pytestmark = pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
TV_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    perceptual.import_torchvision()  # before any test imports lpips or torch_fidelity itself

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"the test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def hub_dir(tmp_path):
    """A private torch.hub cache: what torchvision finds there it loads instead of downloading."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(before)


def _random_backbone(net: str, folder) -> str:
    """torchvision's ImageNet file for ``net``, but random: the full classifier state dict, saved."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()
    path = str(folder / TV_FILES[net])
    torch.save(model.state_dict(), path)
    return path


def _images(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package(net, hub_dir, one_thread):
    import lpips

    path = _random_backbone(net, hub_dir)
    ours = perceptual.load_lpips(path, net=net)
    theirs = lpips.LPIPS(net=net, verbose=False)  # torchvision loads the hub file, heads from the package
    x, ref = _images(3, 3, 32, 40), _images(3, 3, 32, 40, seed=1)
    with torch.no_grad():
        want = theirs(x, ref, normalize=True).flatten().double()
    got = ours(x, ref)
    assert got.shape == (3,) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert (got > 0).all()
    torch.testing.assert_close(ours(x, x), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-7)
    if net == "alex":  # grey images are repeated to RGB; one combined state dict loads the same
        g, gref = x[:, :1], ref[:, :1]
        torch.testing.assert_close(ours(g, gref), ours(g.repeat(1, 3, 1, 1), gref.repeat(1, 3, 1, 1)))
        combined = str(hub_dir.parent / "lpips-alex-combined.pth")
        torch.save(theirs.state_dict(), combined)
        torch.testing.assert_close(perceptual.load_lpips(combined, net="alex")(x, ref), want,
                                   rtol=1e-5, atol=1e-7)


def _random_inception(path) -> str:
    """torch-fidelity's Inception with random weights scaled so that features are O(1), saved."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    with mock.patch.object(cls, "load_state_dict", lambda self, sd, *a, **k: None), \
            mock.patch.object(fe, "load_state_dict_from_url", return_value={}):
        model = cls("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    sd = model.state_dict()
    for k, v in sd.items():
        if v.dim() == 4:  # conv: He init, so activations keep their scale through 94 layers
            v.copy_(torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5)
        elif k.endswith(("running_var", "bn.weight")):
            v.copy_(0.5 + torch.rand(v.shape, generator=g))
        elif v.is_floating_point():
            v.copy_(0.1 * torch.randn(v.shape, generator=g))
    torch.save(sd, path)
    return str(path)


class _Uint8Images(Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i])


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    return _random_inception(tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05.pth")


def test_inception_features_equal_torch_fidelity(inception_path, one_thread):
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    x = _images(4, 3, 37, 45)
    as_png = np.rint(x.numpy().clip(0, 1) * 255).astype(np.uint8)  # what encode_png writes
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False, verbose=False,
                                         feature_extractor_weights_path=inception_path)
    want = get_featuresdict_from_dataset(_Uint8Images(as_png), extractor, batch_size=3, cuda=False,
                                         save_cpu_ram=True, verbose=False)["2048"].double()
    ours = perceptual.load_inception(inception_path)
    got = ours(x)
    assert got.shape == (4, 2048) and got.dtype == torch.float64
    assert want.abs().mean() > 1e-2  # the random network does not collapse to zeros
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    torch.testing.assert_close(ours(x[:1, :1]), ours(x[:1, :1].repeat(1, 3, 1, 1)))  # grey
    feats = got.numpy()
    assert abs(fid(feats, feats)) < 1e-9 * np.trace(np.cov(feats, rowvar=False))


def _direct_fid(a, b):
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)


def _direct_kid(a, b, subsets, m, seed):
    rng, d, out = np.random.RandomState(seed), a.shape[1], []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        k = lambda p, q: (p @ q.T / d + 1) ** 3  # noqa: E731
        off = ~np.eye(m, dtype=bool)
        out.append(k(x, x)[off].mean() + k(y, y)[off].mean() - 2 * k(x, y).mean())
    return np.mean(out), np.std(out)


@pytest.fixture(scope="module")
def feature_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    b = 0.3 + rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.8
    return a, b


def test_fid_equals_direct_scipy_and_torch_fidelity(feature_sets):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    a, b = feature_sets
    got = fid(a, b)
    assert got > 1
    assert got == pytest.approx(_direct_fid(a, b), rel=1e-8)
    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (a, b)]
    assert got == pytest.approx(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"],
                                rel=1e-8)
    assert abs(fid(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))
    assert fid(a, a + 1.0) == pytest.approx(16.0, rel=1e-8)  # a shift adds |mu_a - mu_b|^2 only


def test_kid_equals_direct_numpy_and_torch_fidelity(feature_sets):
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, b = feature_sets
    got = kid(a, b, subsets=20, subset_size=50, seed=3)
    assert got[0] > 0 and got[1] > 0
    np.testing.assert_allclose(got, _direct_kid(a, b, 20, 50, 3), rtol=1e-10)
    lib = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20,
                                 kid_subset_size=50, rng_seed=3, verbose=False)
    np.testing.assert_allclose(got, (lib["kernel_inception_distance_mean"],
                                     lib["kernel_inception_distance_std"]), rtol=1e-10)


def test_feature_moments_stream_equals_numpy(feature_sets):
    a, b = feature_sets
    m = FeatureMoments(16)
    for chunk in np.array_split(a, 7):
        m.update(chunk)
    m.update(a[:0])
    np.testing.assert_allclose(m.mean, a.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.cov, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    both = FeatureMoments(16).update(a[:100]).merge(FeatureMoments(16).update(a[100:]))
    mb = FeatureMoments(16).update(b)
    assert frechet_distance(both.mean, both.cov, mb.mean, mb.cov) == pytest.approx(fid(a, b), rel=1e-9)


def test_missing_and_wrong_files_say_which_and_where_from(tmp_path, inception_path):
    with pytest.raises(FileNotFoundError, match=r"alexnet-owt-7be5be79\.pth.*download\.pytorch\.org"):
        perceptual.load_lpips(tmp_path / "alexnet-owt-7be5be79.pth", net="alex")
    with pytest.raises(FileNotFoundError, match=r"heads weights not found: .*nope\.pth.*lpips"):
        perceptual.load_lpips(_random_backbone("alex", tmp_path), net="alex", head=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"Inception weights not found: .*inc\.pth.*torch-fidelity"):
        perceptual.load_inception(tmp_path / "inc.pth")
    with pytest.raises(ValueError, match=r"FID Inception weights .*alexnet.*missing 'Conv2d_1a_3x3"):
        perceptual.load_inception(tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(ValueError, match=r"vgg backbone weights .*'features.0.weight' has shape \(64, 3, 11"):
        perceptual.load_lpips(tmp_path / "alexnet-owt-7be5be79.pth", net="vgg")
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(ValueError, match=r"junk\.pth: not a PyTorch weights file"):
        perceptual.load_inception(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match=r"net='squeeze'"):
        perceptual.load_lpips(inception_path, net="squeeze")


def test_bad_arguments(tmp_path, feature_sets):
    a, b = feature_sets
    with pytest.raises(ValueError, match=r"subset_size=1000: must be 2\.\.250"):
        kid(a, b, subset_size=1000)
    with pytest.raises(ValueError, match=r"same width"):
        fid(a, b[:, :8])
    lp = perceptual.load_lpips(_random_backbone("alex", tmp_path), net="alex")
    with pytest.raises(ValueError, match=r"at least 31 px"):
        lp(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):
        lp(torch.rand(1, 2, 32, 32), torch.rand(1, 2, 32, 32))
