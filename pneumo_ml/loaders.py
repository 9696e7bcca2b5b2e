"""Batches of cached uint8 images, straight to the device: no per-sample Python work in the training loop."""
from __future__ import annotations

import threading
from queue import Queue

import numpy as np
import torch


class BatchLoader:
    """Iterates (uint8 images (B, H, W), int64 targets (B,)) on `device`.

    The order is a pure function of (seed, epoch), so an interrupted run resumes on the same batches.
    `balanced`: every epoch draws as many images of each class (the minority's repeated, the majority's a fresh
    subset each epoch), alternating, so that every even-sized batch holds both classes equally.
    With `world_size` > 1 each rank takes its own shard (DistributedSampler's padding rule for training).
    On CUDA, batches are copied from pinned memory without blocking, one batch ahead.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, targets, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 pad: bool | None = None, balanced: bool = False):
        self.images = torch.as_tensor(images)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        if len(self.images) != len(self.targets):
            raise ValueError("images and targets differ in length")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.pad = shuffle if pad is None else pad  # training shards pad to equal size; evaluation never repeats
        self.epoch = 0
        self.balanced = balanced

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        n = len(self.targets)
        if self.balanced:
            return self._balanced()
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.pad:
                per_rank = -(-n // self.world_size)
                order = torch.cat([order, order[: per_rank * self.world_size - n]])
            # Strided shards: rank r's k-th batch and the other ranks' together are the single-process k-th
            # batch of batch_size * world_size images.
            order = order[self.rank::self.world_size]
        return order

    def _balanced(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        classes = [torch.nonzero(self.targets == c).flatten() for c in range(2)]
        if any(len(c) == 0 for c in classes):
            raise ValueError("sampler balanced needs training images of both classes")
        # Blocks of world_size images per class, so that each rank's strided shard alternates too.
        per_class = -(-len(self.targets) // (2 * self.world_size)) * self.world_size
        drawn = []
        for members in classes:
            repeats = -(-per_class // len(members))
            drawn.append(torch.cat([members[torch.randperm(len(members), generator=generator)]
                                    for _ in range(repeats)])[:per_class])
        blocks = torch.stack([d.view(-1, self.world_size) for d in drawn], 1)  # (blocks, class, rank)
        return blocks.reshape(-1)[self.rank::self.world_size] if self.world_size > 1 else blocks.reshape(-1)

    def __len__(self) -> int:
        return -(-len(self.indices()) // self.batch_size)

    def __iter__(self):
        order = self.indices()
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.device.type != "cuda":
            for idx in batches:
                yield self.images[idx], self.targets[idx]
            return
        yield from _prefetched((self._to_device(idx) for idx in batches))

    def _to_device(self, idx: torch.Tensor):
        x = self.images[idx].pin_memory().to(self.device, non_blocking=True)
        y = self.targets[idx].pin_memory().to(self.device, non_blocking=True)
        return x, y


def _prefetched(iterator, depth: int = 2):
    """Gather and copy the next batches in a thread while the GPU works on this one."""
    queue: Queue = Queue(maxsize=depth)
    done = object()

    def fill():
        try:
            for item in iterator:
                queue.put(item)
        except BaseException as e:  # re-raised in the consumer
            queue.put(e)
        queue.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
