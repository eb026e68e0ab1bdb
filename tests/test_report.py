"""The visual report and its pieces: figures of the right sizes, a self-contained HTML file
whose every image decodes, the report without data or for undrawable inputs, and the
`report` / `compose` commands."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mfcvae import plots
from mfcvae.cli import main
from mfcvae.datasets import Dataset
from mfcvae.report import ReportOptions, build_report, confident_members, swap_grid

PAD = 1  # the white border between grid tiles (images.grid)


def grid_shape(fig) -> tuple[int, int]:
    """(height, width) in pixels of the image grid a figure shows."""
    return fig.axes[0].images[0].get_array().shape[:2]


def tiles(n_rows: int, n_cols: int, side: int) -> tuple[int, int]:
    return n_rows * (side + PAD) + PAD, n_cols * (side + PAD) + PAD


@pytest.fixture(scope="module")
def data(shapes_data) -> Dataset:
    x, labels = shapes_data
    return Dataset(x, labels, name="shapes")


def test_report_is_self_contained_and_every_image_decodes(fitted, data, tmp_path):
    out = build_report(fitted, data, tmp_path / "r" / "report.html", ReportOptions(per_cluster=5, n_samples=4))
    page = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:|//)|url\(|@import""", page, re.I)
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    files = sorted(out.parent.glob("report_*.png"))
    assert len(embedded) == len(files) >= 2 + 3 * 2 + 1 + 2 * 2  # curves, weights, 3 per facet, recon, confusions
    for payload in embedded:
        Image.open(io.BytesIO(base64.b64decode(payload))).verify()
    for path in files:
        Image.open(path).verify()
    for name in ("Training", "Mixture weights", "Facet 0", "Facet 1", "Reconstructions", "Facets x labels"):
        assert f"<h2>{name}</h2>" in page
    assert page.count("<tr class=best>") == len(data.labels)


def test_a_new_report_removes_the_figures_of_the_one_it_replaces(fitted, data, tmp_path):
    out = tmp_path / "report.html"
    build_report(fitted, data, out, ReportOptions(per_cluster=2, n_samples=2))
    with_data = {p.name for p in tmp_path.glob("report_*.png")}
    (tmp_path / "report_mine.png").write_bytes(b"not ours")  # a user's file the report never named
    build_report(fitted, None, out)  # no data: no confusion matrices, no inputs per cluster
    page = out.read_text()
    left = {p.name for p in tmp_path.glob("report_*.png")}
    assert left == set(re.findall(r"\((report_[\w.-]+\.png)\)</figcaption>", page)) | {"report_mine.png"}
    assert any(name.startswith("report_confusion") for name in with_data) and left < with_data | {"report_mine.png"}


def test_figure_grids_match_clusters_and_counts(fitted, data):
    x = data.x[:]
    proba = fitted.predict_proba(x)
    side = x.shape[-1]
    for j, k in enumerate(fitted.model_.cfg.n_clusters):
        assert grid_shape(plots.cluster_examples(x, proba[j], j, per_cluster=5)) == tiles(k, 5, side)
        samples = [fitted.sample(3, facet=j, cluster=c, seed=0) for c in range(k)]
        assert grid_shape(plots.controlled_generation(samples, list(range(k)), j, 1.0)) == tiles(k, 3, side)
    chosen = x[confident_members(proba[0], 4)]
    assert grid_shape(plots.compositions(chosen, chosen, swap_grid(fitted, chosen, 0), 0)) == tiles(5, 5, side)
    assert grid_shape(plots.reconstructions(x[:6], fitted.reconstruct(x[:6]), ncol=3)) == tiles(4, 3, side)


def test_cluster_examples_are_members_most_confident_first(fitted, data):
    x = data.x[:]
    proba = fitted.predict_proba(x)[1]
    k = plots.cluster_order(proba)[0]  # the largest cluster
    members = np.flatnonzero(proba.argmax(1) == k)
    best = members[np.argsort(-proba[members, k])][:2]
    shown = plots.cluster_examples(x, proba, 1, per_cluster=2, clusters=[k])
    expected = plots.grid(x[best], ncol=2)
    np.testing.assert_array_equal(grid_shape(shown), expected.shape[:2])
    np.testing.assert_array_equal(shown.axes[0].images[0].get_array(), expected)


def test_confident_members_come_from_different_clusters(fitted, data):
    proba = fitted.predict_proba(data.x[:])[0]
    active = len(np.unique(proba.argmax(1)))
    chosen = confident_members(proba, active + 1)  # one per active cluster, then the next most confident
    assert len(chosen) == active + 1 and len(set(chosen.tolist())) == active + 1
    assert len(set(proba[chosen[:active]].argmax(1))) == active


def test_swap_grid_keeps_the_other_facets_latents(fitted, data):
    """Cell (r, c) decodes input r's latents with facet j's from input c: re-encoding through the
    model's own decoder is not exact, so compare with the decoder fed those latents directly."""
    x = data.x[:4]
    grid = swap_grid(fitted, x, facet=1)
    z = fitted.transform_facets(x)
    with torch.no_grad():
        expected = fitted.model_.decode_mean([torch.from_numpy(z[0][2:3]), torch.from_numpy(z[1][3:4])]).numpy()
    np.testing.assert_allclose(grid[2, 3], expected[0], atol=1e-6)
    for r in range(4):
        np.testing.assert_allclose(grid[r, r], fitted.reconstruct(x[r:r + 1])[0], atol=1e-6)


def test_controlled_generation_holds_the_other_facets_fixed(fitted):
    """Same seed, different cluster of facet 1: facet 0's latents are identical, facet 1's differ."""
    gen = lambda k: fitted.model_.sample_latents(5, facet=1, cluster=k, generator=torch.Generator().manual_seed(3))  # noqa: E731
    a, b = gen(0), gen(1)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_report_without_data_and_for_vectors(fitted, tmp_path, tiny_estimator):
    page = build_report(fitted, None, tmp_path / "bare.html").read_text()
    assert "Facet 0" in page and "Facets x labels" not in page and "inputs per cluster" not in page
    vectors = np.random.default_rng(0).random((80, 7), dtype=np.float32)  # 7 is not a square: no images
    model = tiny_estimator(epochs=1).fit(vectors)
    page = build_report(model, Dataset(vectors, {"y": np.arange(80) % 2}), tmp_path / "v.html").read_text()
    assert "cannot be drawn as images" in page and "Facets x labels" in page and "Facet 0" not in page
    with pytest.raises(TypeError, match="Dataset"):
        build_report(model, vectors, tmp_path / "x.html")


def test_report_and_compose_commands(fitted, data, tmp_path, capsys):
    fitted.save(tmp_path / "model")
    np.savez(tmp_path / "d.npz", x=data.x[:], **data.labels)
    assert main(["report", str(tmp_path / "model"), "--data", str(tmp_path / "d.npz"), "--max-clusters", "2"]) == 0
    assert (tmp_path / "model" / "report.html").is_file()
    assert "report written to" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "model"), "--out", str(tmp_path / "bare.html")]) == 0  # no data: still a report
    assert "leaves out input examples" in capsys.readouterr().err
    assert main(["compose", str(tmp_path / "model"), "--data", str(tmp_path / "d.npz"), "--facet", "0", "--n", "3",
                 "--out", str(tmp_path / "c.png")]) == 0
    side = data.shape[-1]
    height, width = tiles(4, 4, side)
    assert Image.open(tmp_path / "c.png").size == (width * 4, height * 4)  # save_grid enlarges 4x
    assert main(["compose", str(tmp_path / "model"), "--data", str(tmp_path / "d.npz"), "--facet", "5",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert "--facet must be in [0, 2)" in capsys.readouterr().err
