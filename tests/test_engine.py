import numpy as np
import pytest
import torch

from pneumo_ml import engine
from pneumo_ml.loaders import BatchLoader
from pneumo_ml.models import create_model, normalization
from pneumo_ml.transforms import BatchTransform, augment_batch


def blobs(n=48, size=32, seed=0):
    """Class 1 has a bright square somewhere: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    images = rng.integers(40, 90, size=(n, size, size)).astype(np.uint8)
    targets = np.arange(n) % 2
    for i in np.flatnonzero(targets):
        y, x = rng.integers(2, size - 10, 2)
        images[i, y:y + 8, x:x + 8] = 230
    return images, targets


def setup(seed=0, lr=3e-3, aug=False):
    torch.manual_seed(seed)
    model = create_model("small_cnn", "false")
    mean, std = normalization(model)
    images, targets = blobs()
    val_images, val_targets = blobs(16, seed=1)
    train = BatchLoader(images, targets, 8, shuffle=True, seed=seed)
    val = BatchLoader(val_images, val_targets, 8)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return model, train, val, opt, BatchTransform(mean, std, augment=aug), BatchTransform(mean, std)


def run_fit(epochs, state=None, parts=None, **kw):
    model, train, val, opt, ttf, etf = parts or setup()
    return model, opt, engine.fit(model, train, val, opt, engine.make_loss("ce", [24, 24]), ttf, etf, epochs=epochs,
                                  seed=0, progress=False, state=state, **kw)


def test_training_learns_and_restores_the_best_epoch():
    model, _, state = run_fit(6)
    losses = [r["train_loss"] for r in state.history]
    assert losses[-1] < losses[0]
    assert state.best_epoch == 1 + int(np.argmin([r["val_loss"] for r in state.history]))
    best = {k: v for k, v in state.best_state.items()}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k])
    assert state.history[-1]["val_auc"] > 0.8


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    _, _, state = run_fit(30, patience=1, monitor="val_accuracy")
    assert len(state.history) < 30
    assert state.stale_epochs == 1


def test_same_seed_same_result_and_resume_equals_uninterrupted():
    _, _, full = run_fit(3)
    _, _, again = run_fit(3)
    assert [r["val_loss"] for r in full.history] == [r["val_loss"] for r in again.history]
    model, opt, first = run_fit(2)
    saved = engine.checkpoint(model, opt, first)
    parts = setup()
    resumed_state = engine.restore(parts[0], parts[3], saved)
    _, _, resumed = run_fit(3, state=resumed_state, parts=parts)
    np.testing.assert_allclose([r["val_loss"] for r in resumed.history], [r["val_loss"] for r in full.history],
                               rtol=1e-5)


def test_non_finite_loss_stops_training():
    parts = setup()
    with torch.no_grad():
        parts[0].head[-1].bias.fill_(float("nan"))  # what a diverged run looks like
    with pytest.raises(engine.NonFiniteLossError, match="epoch 1: the training loss became nan"):
        run_fit(1, parts=parts)


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal"])
def test_losses(name):
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5], [1.0, 1.0]])
    target = torch.tensor([0, 1, 1])
    value = engine.make_loss(name, [30, 10])(logits, target)
    assert value.ndim == 0 and value > 0
    if name == "focal":
        ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        assert value < ce.mean()  # down-weights the easy example


def test_weighted_ce_weights_the_rare_class_up():
    loss = engine.make_loss("weighted_ce", [30, 10])
    assert loss.weight[1] / loss.weight[0] == pytest.approx(3.0)


def test_eval_transform_normalises_with_the_models_stats():
    batch = torch.full((2, 8, 8), 255, dtype=torch.uint8)
    x = BatchTransform((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(batch)
    assert x.shape == (2, 3, 8, 8) and torch.allclose(x, torch.ones_like(x))
    imagenet = BatchTransform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(torch.zeros(1, 4, 4, dtype=torch.uint8))
    assert torch.allclose(imagenet[0, :, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_augmentation_is_seeded_bounded_and_actually_flips_and_rotates():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 4:12, 1:4] = 1.0  # a bar on the left
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    right_heavy = (a[:, 0, :, 8:].sum((1, 2)) > a[:, 0, :, :8].sum((1, 2))).float().mean()
    assert 0.25 < right_heavy < 0.75  # about half flipped
    assert not torch.equal(a[0], x[0]) or not torch.equal(a[1], x[1])


def test_loader_order_depends_only_on_seed_and_epoch_and_shards_cover_everything():
    images, targets = blobs(10)
    loader = BatchLoader(images, targets, 4, shuffle=True, seed=3)
    loader.set_epoch(1)
    first = loader.indices()
    loader.set_epoch(2)
    assert not torch.equal(first, loader.indices())
    loader.set_epoch(1)
    assert torch.equal(first, loader.indices())
    train = [BatchLoader(images, targets, 4, shuffle=True, rank=r, world_size=3).indices() for r in range(3)]
    assert len({len(s) for s in train}) == 1 and set(torch.cat(train).tolist()) == set(range(10))  # padded
    evaluation = [BatchLoader(images, targets, 4, rank=r, world_size=3).indices() for r in range(3)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(10))  # every image exactly once
