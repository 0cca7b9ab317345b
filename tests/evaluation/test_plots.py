"""Pictures: each function writes a PNG that opens, has a sensible size and is not blank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation import plots


def opened(path, min_w=150, min_h=150) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert min_w <= w <= 4000 and min_h <= h <= 4000
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 5  # something was drawn
    return pixels


def test_tsne_map_subsamples_and_colours_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    y = torch.arange(3).repeat(50)
    x = centres[y] + torch.randn(150, 16, generator=g)
    p = plots.tsne_map(x, y, tmp_path / "sub" / "tsne.png", class_names=["cat", "dog", "ship"],
                       max_points=90, max_iter=250)
    assert p == tmp_path / "sub" / "tsne.png"
    px = opened(p, 300, 300)
    # three classes in three tab10 colours (blue, orange, green) on the picture
    for rgb in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        assert (np.abs(px.astype(int) - rgb).sum(-1) < 30).sum() > 20
    opened(plots.tsne_map(x, None, tmp_path / "nolabels.png", max_points=60, max_iter=250))


def test_tsne_embedding_separates_blobs():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(2, 10, generator=g) * 10
    y = torch.arange(2).repeat(30)
    xy = plots.tsne_embedding(centres[y] + torch.randn(60, 10, generator=g), max_iter=250)
    assert xy.shape == (60, 2)
    a, b = xy[y.numpy() == 0], xy[y.numpy() == 1]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 2 * max(a.std(0).max(), b.std(0).max())


def test_contact_sheet_takes_nchw_nhwc_and_grayscale(tmp_path):
    g = torch.Generator().manual_seed(2)
    nchw = torch.randint(0, 256, (60, 3, 12, 12), dtype=torch.uint8, generator=g)
    assign = torch.randint(0, 5, (60,), generator=g)
    a = opened(plots.contact_sheet(nchw, assign, tmp_path / "a.png", per_cluster=6))
    b = opened(plots.contact_sheet(nchw.permute(0, 2, 3, 1).numpy(), assign.numpy(),
                                   tmp_path / "b.png", per_cluster=6))
    assert np.array_equal(a, b)  # the same picture from either layout
    gray = opened(plots.contact_sheet(nchw[:, :1], assign, tmp_path / "g.png", per_cluster=6))
    assert gray.shape == a.shape
    two_rows = opened(plots.contact_sheet(nchw, assign, tmp_path / "two.png", per_cluster=6,
                                          cluster_ids=[0, 3]))
    assert two_rows.shape[0] < a.shape[0] and abs(two_rows.shape[1] - a.shape[1]) < 12
    with pytest.raises(UserError, match="assignments"):
        plots.contact_sheet(nchw, assign[:-1], tmp_path / "bad.png")
    with pytest.raises(UserError, match="channels"):
        plots.contact_sheet(torch.zeros(4, 5, 8, 8, dtype=torch.uint8), assign[:4],
                            tmp_path / "bad.png")


def test_curves_and_bars(tmp_path):
    rows = [{"step": 10 * i, "loss": 5.0 / (i + 1), "ln_k": 4.6} for i in range(20)]
    rows.insert(3, {"step": 25, "loss": float("nan")})  # skipped, not drawn as a gap crash
    opened(plots.loss_curve(rows, tmp_path / "loss.png"))
    opened(plots.loss_curve([{"loss": float("nan")}], tmp_path / "empty.png"))
    opened(plots.knn_bands({"swav": [(1, 0.30, 0.30, 0.30), (2, 0.41, 0.40, 0.43),
                                     (3, 0.45, 0.44, 0.46)],
                            "simclr": [(2, 0.44, 0.44, 0.44), (1, 0.35, 0.35, 0.35)]},
                           tmp_path / "knn.png", xlabel="epoch", floor=0.36))
    bars = opened(plots.metric_bars(
        {"random init": {"knn_k20": 0.36, "knn_k200": 0.35, "linear": None, "nmi": 0.05},
         "swav": {"knn_k20": 0.40, "knn_k200": 0.41, "linear": 0.45, "nmi": 0.12}},
        tmp_path / "bars.png"))
    one = opened(plots.metric_bars({"swav": {"knn_k20": 0.4}}, tmp_path / "one.png"))
    assert bars.shape[1] > one.shape[1]  # wider with more methods


def test_many_curves_put_the_legend_beside_the_axes(tmp_path):
    def curves(n):
        return {f"method{i}": [(1, 0.3 + 0.01 * i, 0.3, 0.3 + 0.02 * i), (2, 0.4, 0.4, 0.4)]
                for i in range(n)}

    few = opened(plots.knn_bands(curves(5), tmp_path / "few.png", xlabel="epoch", floor=0.3))
    many = opened(plots.knn_bands(curves(6), tmp_path / "many.png", xlabel="epoch", floor=0.3))
    assert many.shape[0] == few.shape[0]  # same height: the axes are the same size
    assert many.shape[1] > few.shape[1] * 1.15  # the legend's column is added on the right


def test_backend_is_agg_and_no_figure_is_left_open(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    plots.knn_bands({"a": [(1, 0.5, 0.5, 0.5)]}, tmp_path / "k.png", xlabel="epoch")
    assert matplotlib.get_backend().lower() == "agg"
    assert plt.get_fignums() == []
