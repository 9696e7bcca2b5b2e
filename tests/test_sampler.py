"""sampler: balanced (the study's recommendation 2c): class-balanced training batches and stronger augmentation
of the minority class, reproducible per seed; on a real imbalanced split, through the real training run."""
import numpy as np
import pytest
import torch
from conftest import TINY
from mlflow.tracking import MlflowClient

from pneumo_ml import config, synthetic
from pneumo_ml.loaders import BatchLoader
from pneumo_ml.train import build, prepare_data, run_experiment
from pneumo_ml.transforms import BatchTransform

TARGETS = np.array([1] * 30 + [0] * 6)  # 5:1, like the whole Kermany training set's 3:1 made worse


def loader(**kw):
    images = np.arange(len(TARGETS), dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    return BatchLoader(images, TARGETS, 8, shuffle=True, seed=3, balanced=True, **kw)


def test_every_balanced_batch_holds_both_classes_equally_and_every_minority_image_each_epoch():
    for epoch in (0, 1, 2):
        batches = loader()
        batches.set_epoch(epoch)
        targets = [t for _, t in batches]
        assert all(2 * int(t.sum()) == len(t) for t in targets)
        order = batches.indices().numpy()
        assert set(order[TARGETS[order] == 0]) == {30, 31, 32, 33, 34, 35}
        assert len(order) == 36


def test_the_balanced_order_depends_only_on_seed_and_epoch_and_each_rank_is_balanced():
    a, b = loader(), loader()
    assert torch.equal(a.indices(), b.indices())
    b.set_epoch(1)
    assert not torch.equal(a.indices(), b.indices())
    for rank in (0, 1):
        shard = loader(rank=rank, world_size=2)
        assert all(2 * int(t.sum()) == len(t) for _, t in shard)


def test_minority_images_get_the_stronger_augmentation_and_the_majority_the_seeds():
    images = torch.full((2, 32, 32), 128, dtype=torch.uint8)
    images[:, 8:24, 4:12] = 250  # an asymmetric bar: a flip or rotation moves it
    targets = torch.tensor([0, 1])
    plain = BatchTransform((0.5,) * 3, (0.5,) * 3)
    no_aug = BatchTransform((0.5,) * 3, (0.5,) * 3, minority=0)
    out = no_aug(images, torch.Generator().manual_seed(0), targets)
    assert torch.equal(out[1], plain(images)[1])  # majority, aug off: untouched
    assert not torch.equal(out[0], plain(images)[0])  # minority: augmented all the same
    seeds = BatchTransform((0.5,) * 3, (0.5,) * 3, augment=True)
    both = BatchTransform((0.5,) * 3, (0.5,) * 3, augment=True, minority=0)
    reference = seeds(images, torch.Generator().manual_seed(1))
    stronger = both(images, torch.Generator().manual_seed(1), targets)
    assert torch.allclose(stronger[1], reference[1])  # the same draws, the study's ranges
    assert not torch.allclose(stronger[0], reference[0])  # the same draws, 1.5 times the ranges


@pytest.fixture
def imbalanced_manifest(tmp_path):
    """A real synthetic set whose training split keeps 3 NORMAL images for 12 PNEUMONIA."""
    out = tmp_path / "imbalanced"
    manifest = synthetic.write_dataset(out, n_train=24, n_val=8, n_test=8, size=64, progress=False)
    normal_train = manifest[(manifest.split == "train") & (manifest.label == "NORMAL")].index[3:]
    path = out / "imbalanced.csv"
    manifest.drop(normal_train).to_csv(path, index=False)
    return path


def test_a_balanced_run_on_an_imbalanced_split_is_balanced_logged_and_reproducible(imbalanced_manifest):
    cfg = config.load(config.experiment_path("small_cnn"), **{**TINY, "data": str(imbalanced_manifest), "n_train": 0,
                                                             "n_val": 0, "n_test": 0, "sampler": "balanced",
                                                             "gradcam_images": 0, "epochs": 2, "register": False})
    data = prepare_data(cfg, progress=False)
    assert np.bincount(data.targets["train"]).tolist() == [3, 12]
    batches = [t for _, t in build(cfg, data, torch.device("cpu")).loaders["train"]]
    assert all(2 * int(t.sum()) == len(t) for t in batches)
    first, second = (run_experiment(cfg, data=data, progress=False) for _ in range(2))
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    params = MlflowClient().get_run(first.run_id).data.params
    assert params["sampler"] == "balanced" and params["split_train"] == "15"
