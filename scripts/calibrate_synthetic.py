"""Calibrate the synthetic data set's difficulty: train the seed-protocol small CNN, report test accuracy/AUC.

Protocol (per seed s): the data set write_dataset(seed=s) would write (200 train, 16 val, 100 test,
stratified, 512 px), rendered in memory; images resized to 224x224, grey repeated to 3 channels,
normalised with mean 0.5 / std 0.5; train augmentation: horizontal flip, rotation ±10°, brightness ±0.2;
small CNN (4 × conv3x3-BN-ReLU-maxpool2 with 32/64/128/128 channels, global average pool, dropout 0.3,
linear → 2); 5 epochs, batch 32, Adam lr 1e-4, cross-entropy; the last epoch's model is tested.

    PYTHONPATH=. python scripts/calibrate_synthetic.py --difficulty 0 0.5 1 --seeds 0 1 2

Prints one line per (difficulty, seed) and a mean per difficulty. A few minutes per run on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from pneumo_ml import synthetic


def load_split(seed, difficulty, size, split, counts):
    """Images (N×1×224×224 float in [0, 1]) and labels of one split, exactly as write_dataset plans them."""
    rows = [r for r in synthetic._plan(*counts, seed, "png") if r["split"] == split]
    images, labels = [], []
    for r in rows:
        pneumonia = r["label"] == "PNEUMONIA"
        img, _ = synthetic.render_case(seed, r["index"], pneumonia, size=size, difficulty=difficulty)
        images.append(np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR), np.float32) / 255)
        labels.append(int(pneumonia))
    return torch.from_numpy(np.stack(images)[:, None]), torch.tensor(labels)


def small_cnn():
    blocks, channels = [], [3, 32, 64, 128, 128]
    for c_in, c_out in zip(channels, channels[1:]):
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 2))


AUGMENT = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(10), v2.ColorJitter(brightness=0.2)])


def to_input(x):
    return (x.repeat(1, 3, 1, 1) - 0.5) / 0.5


def auc(scores, labels):
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate(model, x, y, device):
    model.eval()
    prob = torch.cat([model(to_input(b.to(device))).softmax(1)[:, 1].cpu() for b in x.split(64)])
    return float(((prob > 0.5).long() == y).float().mean()), auc(prob.numpy(), y.numpy())


def run(seed, difficulty, size, device, epochs=5, lr=1e-4):
    torch.manual_seed(seed)
    counts = (200, 16, 100)
    data = {s: load_split(seed, difficulty, size, s, counts) for s in ("train", "val", "test")}
    model = small_cnn().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data["train"]
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(32):
            batch = torch.stack([AUGMENT(img) for img in x[idx]]).clamp(0, 1)
            loss = nn.functional.cross_entropy(model(to_input(batch.to(device))), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return evaluate(model, *data["val"], device), evaluate(model, *data["test"], device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--difficulty", type=float, nargs="+", default=[synthetic.DEFAULT_DIFFICULTY])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=synthetic.DEFAULT_SIZE)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5, help="protocol: 5")
    p.add_argument("--lr", type=float, default=1e-4, help="protocol: 1e-4")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for d in args.difficulty:
        accs, aucs = [], []
        for seed in args.seeds:
            t0 = time.time()
            (val_acc, _), (acc, test_auc) = run(seed, d, args.size, args.device, args.epochs, args.lr)
            accs.append(acc)
            aucs.append(test_auc)
            print(f"difficulty={d:g} seed={seed} val_acc={val_acc:.3f} test_acc={acc:.3f} "
                  f"test_auc={test_auc:.3f} ({time.time() - t0:.0f} s)", flush=True)
        print(f"difficulty={d:g} mean test_acc={np.mean(accs):.3f} mean test_auc={np.mean(aucs):.3f}", flush=True)


if __name__ == "__main__":
    main()
