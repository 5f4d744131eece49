"""cl.embed / cl.Embedder: pooled vectors against a brute-force forward, layouts against scikit-learn, separation
by depth on the trained default, every data source, caching, bad arguments, and a model left untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import cnnlens as cl
from cnnlens.core.progress import Cancelled, CancelToken

from .conftest import assert_unchanged, forwards_in_parts, random_model, snapshot
from .test_invariants import MidTraining

LAYERS = ["stage1", "stage2.bn1", "stage2.relu1", "stage4", "gap", "fc"]


@pytest.fixture(scope="module")
def shapes():
    model, data = cl.zoo.shapes(400)
    return model, data


def brute_force(model: torch.nn.Module, images: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Each layer's output on a plain eval copy, averaged over H×W by hand (B×C×1×1 and B×K flattened)."""
    net = copy.deepcopy(model).eval()
    seen: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.clone()))
               for n in names]
    with torch.no_grad():
        net(images)
    for handle in handles:
        handle.remove()
    return {n: (v.mean(dim=(2, 3)) if v.dim() == 4 and v.shape[-1] > 1 else v.flatten(1)) for n, v in seen.items()}


def test_pooled_vectors_equal_a_brute_force_forward(shapes):
    model, data = shapes
    images = torch.stack([data[i][0] for i in range(100)])
    found = cl.Embedder(model, images, batch_size=7).vectors(LAYERS)  # batches that do not divide 100
    expected = brute_force(model, images, LAYERS)
    for name in LAYERS:
        assert found[name].shape == expected[name].shape
        torch.testing.assert_close(found[name], expected[name], rtol=1e-4, atol=1e-5)


def test_forwards_run_in_heap_sized_parts(shapes, monkeypatch):
    """On the CPU a loaded batch goes through the model in the session's heap-sized parts (7 here, patched):
    the same vectors and predictions as whole batches."""

    model, data = shapes
    images = torch.stack([data[i][0] for i in range(100)])
    whole = cl.Embedder(model, images, batch_size=40).vectors(LAYERS)
    sizes = forwards_in_parts(monkeypatch, 7)
    embedder = cl.Embedder(model, images, batch_size=40)
    parts = embedder.vectors(LAYERS)
    assert max(sizes) == 7 and sum(sizes) == 100 and sizes[:6] == [7, 7, 7, 7, 7, 5]  # 40 = 5 × 7 + 5
    for name in LAYERS:
        torch.testing.assert_close(parts[name], whole[name], rtol=1e-4, atol=1e-5)
    result = cl.embed(model, images, "fc", method="pca")
    with torch.no_grad():
        assert result.predictions.tolist() == model(images).argmax(1).tolist()


def test_labels_predictions_and_indices_line_up_with_the_data(shapes):
    model, data = shapes
    result = cl.embed(model, data, "fc", method="pca", max_images=50)
    assert result.indices.tolist() == [round(i * 399 / 49) for i in range(50)]  # spread evenly over the data
    assert result.labels.tolist() == [data[i][1] for i in result.indices.tolist()]
    images = torch.stack([data[i][0] for i in result.indices.tolist()])
    with torch.no_grad():
        assert result.predictions.tolist() == model(images).argmax(1).tolist()
    assert result.points.shape == (50, 2) and result.points.dtype == torch.float32
    assert result.layer == "fc" and result.method == "pca" and result.classes == tuple(data.classes)


def test_pca_equals_scikit_learn_on_the_vectors(shapes):
    from sklearn.decomposition import PCA

    model, data = shapes
    embedder = cl.Embedder(model, data, max_images=200)
    vectors = embedder.vectors("stage3")["stage3"].numpy()
    points = embedder.embed("stage3", method="pca").points.numpy()
    np.testing.assert_allclose(points, PCA(2, svd_solver="full").fit_transform(vectors), rtol=1e-4, atol=1e-4)


def test_tsne_is_deterministic_for_a_seed_and_varies_with_it(shapes):
    model, data = shapes
    a = cl.embed(model, data, "stage4", max_images=150, seed=3)
    b = cl.embed(model, data, "stage4", max_images=150, seed=3)
    c = cl.embed(model, data, "stage4", max_images=150, seed=4, perplexity=10)
    assert torch.equal(a.points, b.points)
    assert not torch.allclose(a.points, c.points)
    assert a.params["perplexity"] == 30 and c.params["perplexity"] == 10


def test_classes_separate_with_depth_on_the_trained_default(shapes):
    """The last layer's t-SNE groups images by class as well as the model classifies them; the first does not."""
    model, data = shapes
    first, last = cl.embed(model, data, ["stage1", "stage4"], seed=0)
    accuracy = float((last.predictions == last.labels).float().mean())
    assert last.knn_accuracy() >= 0.8
    assert last.knn_accuracy() >= accuracy - 0.05
    assert first.knn_accuracy() < last.knn_accuracy() - 0.3
    assert last.knn_accuracy(of="predictions") >= 0.8


def test_default_layer_is_the_last_spatial_one(shapes):
    model, data = shapes
    assert cl.embed(model, data, method="pca", max_images=20).layer == "stage4"
    assert cl.embed(model, data, model.stage3, method="pca", max_images=20).layer == "stage3"


def test_every_data_source_gives_the_same_embedding(shapes):
    model, data = shapes
    images = torch.stack([data[i][0] for i in range(60)])
    labels = torch.tensor([data[i][1] for i in range(60)])
    subset = torch.utils.data.Subset(data, range(60))
    from_dataset = cl.embed(model, subset, "stage4", method="pca", batch_size=16)
    from_tensor = cl.embed(model, images, "stage4", method="pca")
    from_list = cl.embed(model, [images[i] for i in range(60)], "stage4", method="pca")
    pairs = torch.utils.data.TensorDataset(images, labels)
    from_loader = cl.embed(model, DataLoader(pairs, batch_size=13), "stage4", method="pca")
    limited = cl.embed(model, DataLoader(pairs, batch_size=13), "stage4", method="pca", max_images=30)
    for other in (from_tensor, from_list, from_loader):
        torch.testing.assert_close(other.points, from_dataset.points, rtol=1e-4, atol=1e-4)
        assert other.indices.tolist() == list(range(60))
        assert torch.equal(other.predictions, from_dataset.predictions)
    assert from_tensor.labels.tolist() == [-1] * 60  # a bare tensor has no labels
    assert torch.equal(from_loader.labels, labels) and torch.equal(from_dataset.labels, labels)
    assert limited.indices.tolist() == list(range(30))


def test_one_pass_for_many_layers_and_layouts_are_cached(shapes, monkeypatch):
    model, data = shapes
    embedder = cl.Embedder(model, data, max_images=64, batch_size=32)
    forwards = []  # images read (the shadow runs, not the model, so its batches are counted here)
    original = embedder._batches

    def counted():
        for batch in original():
            forwards.append(len(batch.indices))
            yield batch

    monkeypatch.setattr(embedder, "_batches", counted)
    both = embedder.embed(["stage2", "stage3"], method="pca")
    assert [e.layer for e in both] == ["stage2", "stage3"] and sum(forwards) == 64
    again = embedder.embed("stage3", method="pca")
    assert again is both[1] and sum(forwards) == 64  # no new pass, same layout object
    embedder.embed("stage4", method="pca")
    assert sum(forwards) == 128  # a new layer: one more pass
    with torch.no_grad():  # the weights move (a training step): the vectors are read again
        model.fc.bias.add_(0.0)
    embedder.embed("stage3", method="pca")
    assert sum(forwards) == 192


def test_progress_partial_layouts_and_cancellation(shapes):
    model, data = shapes
    seen, partial = [], []
    result = cl.embed(model, data, "stage4", max_images=100, progress=lambda d, t: seen.append((d, t)),
                      partial=partial.append)
    assert seen[-1][0] == seen[-1][1] and len(seen) > 10
    assert partial and all(p.points.shape == (100, 2) and p.params == {"partial": True} for p in partial)
    assert not torch.equal(partial[0].points, result.points)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        cl.embed(model, data, "stage4", max_images=100, cancel=token)


def test_bad_arguments_name_themselves(shapes):
    model, data = shapes
    with pytest.raises(ValueError, match="method.*tsne, pca, umap"):
        cl.embed(model, data, method="lda")
    with pytest.raises(ValueError, match="layer 'stage9'.*stage4"):
        cl.embed(model, data, "stage9")
    with pytest.raises(TypeError, match="layer must be"):
        cl.embed(model, data, 3)
    with pytest.raises(ValueError, match="max_images"):
        cl.embed(model, data, max_images=0)
    with pytest.raises(ValueError, match="perplexity"):
        cl.embed(model, data, perplexity=-1)
    with pytest.raises(TypeError, match="data"):
        cl.embed(model, 5)
    with pytest.raises(ValueError, match="at least 3"):
        cl.embed(model, data, max_images=2, method="pca")
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install umap-learn"):
            cl.embed(model, data, method="umap")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_the_model_is_untouched_mid_training(arch):
    model = random_model(arch)
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with MidTraining(model) as state:
        before = snapshot(model)
        rng = torch.get_rng_state()
        last = cl.layers(model, 64)[-1].name
        embeddings = cl.embed(model, images, [None, last], perplexity=3)
        with pytest.raises(ValueError):
            cl.embed(model, images, "nope")
        token = CancelToken()
        token.cancel()
        with pytest.raises(Cancelled):
            cl.embed(model, images, cancel=token)
        assert_unchanged(model, before)
        assert torch.equal(rng, torch.get_rng_state())
        assert state.fired == 0
    assert [e.points.shape for e in embeddings] == [(12, 2), (12, 2)]


# --- the view -------------------------------------------------------------------------------------


def test_view_draws_each_layer_once_recolours_without_recompute_and_clicks_set_the_image(shapes):
    from cnnlens.widgets.embed_view import EmbeddingView, atlas_side

    model, data = shapes
    view = EmbeddingView(model, data, max_images=120, method="pca")
    assert view.wait(60) and view.runner.last_error is None
    panel = view.panel
    assert view.names == ["normalize", "stage1", "stage2", "stage3", "stage4", "fc"] and view.layer.value == "stage4"
    points = np.frombuffer(panel.points, dtype=np.float32).reshape(-1, 2)
    groups = np.frombuffer(panel.groups, dtype=np.int32).reshape(3, -1)
    indices = groups[2].tolist()
    assert len(points) == 120 and indices == [round(i * 399 / 119) for i in range(120)]
    assert groups[0].tolist() == [data[i][1] for i in indices]
    np.testing.assert_allclose(points, cl.embed(model, data, "stage4", method="pca", max_images=120).points.numpy(),
                               rtol=1e-5, atol=1e-5)
    assert [name for name, _ in panel.legend] == list(data.classes) and "PCA of 120 images" in panel.title
    side = atlas_side(120)  # thumbnails: one tile per point, as the model sees the image
    atlas = np.frombuffer(panel.atlas, dtype=np.uint8).reshape(120, side, side, 3)
    expected = torch.nn.functional.interpolate(data[indices[7]][0][None], size=(side, side), mode="area")[0]
    assert np.abs(atlas[7].astype(int) - (expected.permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)).max() <= 1

    done = view.runner.completed
    view.color.value = 1  # colour by prediction: the browser recolours, nothing is recomputed
    assert panel.color_by == 1 and view.wait(5) and view.runner.completed == done

    first = view.result
    view.layer.value = "stage1"
    assert view.wait(60) and view.result.layer == "stage1" and view.runner.last_error is None
    view.layer.value = "stage4"  # back: the cached layout
    assert view.wait(60) and view.result is first

    panel.selected = 7  # a click on point 7 makes its image the current one, and the ring follows the picker
    assert view.index.value == indices[7]
    view.index.value = indices[20]
    assert panel.selected == 20
    view.index.value = 1  # not among the embedded images: no ring
    assert panel.selected == -1
    view.close()


def test_view_shows_errors_in_the_widget(shapes):
    from cnnlens.widgets.embed_view import EmbeddingView

    model, data = shapes
    view = EmbeddingView(model, data, max_images=2)
    assert view.wait(60)
    assert view.panel.status == "error" and "at least 3" in view.panel.error
    view.close()
    with pytest.raises(ValueError, match="method.*tsne, pca"):
        EmbeddingView(model, data, method="lda")
    with pytest.raises(ValueError, match="layer 'nope'"):
        EmbeddingView(model, data, layers=["stage1", "nope"])


def test_view_leaves_a_model_mid_training_untouched():
    from cnnlens.widgets.embed_view import EmbeddingView

    model = random_model("resnet18")
    images = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with MidTraining(model) as state:
        before = snapshot(model)
        view = EmbeddingView(model, images, perplexity=4)
        assert view.wait(60) and view.runner.last_error is None
        view.layer.value = view.names[0]
        assert view.wait(60) and view.runner.last_error is None
        view.close()
        assert_unchanged(model, before)
        assert state.fired == 0


def test_degenerate_embeddings_stay_finite_and_few_points_get_a_knn_accuracy():
    """t-SNE of identical vectors returned NaN points; knn_accuracy on 5 points asked a fold for 4 neighbours
    out of 3 (NaN, with scikit-learn's traceback as a warning)."""
    import warnings

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    same = cl.embed(model, torch.rand(1, 3, 32, 32).repeat(4, 1, 1, 1), method="tsne")
    assert torch.equal(same.points, torch.zeros(4, 2))
    few = [(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 2) for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedding = cl.embed(model, few, method="pca")
        accuracy = embedding.knn_accuracy()
    assert 0.0 <= accuracy <= 1.0 and embedding.knn_neighbours() == 2  # 5 points, 2 folds: 2 to fit on, at fewest
    from cnnlens.widgets.embed_view import EmbeddingView

    view = EmbeddingView(model, few, method="pca")
    try:
        assert view.wait(60) and " · 2-NN accuracy " in view.panel.title  # it said 10-NN
    finally:
        view.close()
