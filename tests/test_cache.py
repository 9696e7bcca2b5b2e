import shutil

import numpy as np
from conftest import SAMPLES

from pneumo_ml.cache import DecodedCache
from pneumo_ml.preprocess import decode_resized

FILES = sorted(str(p) for p in SAMPLES.rglob("*.jpeg"))


def test_second_use_hits_memory_and_decodes_nothing():
    cache = DecodedCache()
    first, failures = cache.load(FILES, 64, workers=1, progress=False)
    assert not failures and first.shape == (len(FILES), 64, 64) and first.dtype == np.uint8
    assert cache.stats.decoded == len(FILES)
    second, _ = cache.load(FILES, 64, workers=1, progress=False)
    assert cache.stats.decoded == len(FILES) and cache.stats.memory_hits == len(FILES)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], decode_resized(FILES[0], 64))


def test_keyed_by_content_and_size_not_by_path(tmp_path):
    copy = tmp_path / "renamed.jpeg"
    shutil.copy(FILES[0], copy)
    cache = DecodedCache()
    cache.load(FILES[:1], 32, workers=1, progress=False)
    cache.load([str(copy)], 32, workers=1, progress=False)
    assert cache.stats.memory_hits == 1
    cache.load([str(copy)], 48, workers=1, progress=False)
    assert cache.stats.decoded == 2


def test_disk_cache_serves_a_new_process_worth_of_cache(tmp_path):
    DecodedCache(tmp_path / "c").load(FILES, 32, workers=1, progress=False)
    fresh = DecodedCache(tmp_path / "c")
    fresh.load(FILES, 32, workers=1, progress=False)
    assert fresh.stats.disk_hits == len(FILES) and fresh.stats.decoded == 0


def test_parallel_decoding_equals_serial_and_reports_bad_files(tmp_path):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(open(FILES[0], "rb").read()[:2000])
    paths = FILES * 3 + [str(bad)]
    serial, serial_fail = DecodedCache().load(paths, 32, workers=1, progress=False)
    parallel, parallel_fail = DecodedCache().load(paths, 32, workers=2, progress=False)
    np.testing.assert_array_equal(serial, parallel)
    assert [f.index for f in parallel_fail] == [len(paths) - 1] and parallel_fail[0].path == str(bad)
    assert parallel_fail[0].reason == "truncated JPEG header"  # the reason alone: the path is beside it
    assert serial_fail == parallel_fail


def test_memory_is_bounded():
    cache = DecodedCache(max_bytes=3 * 32 * 32)
    cache.load(FILES, 32, workers=1, progress=False)
    assert cache._bytes <= 3 * 32 * 32 and len(cache._memory) == 3


def test_a_data_set_larger_than_the_memory_limit_streams_from_a_memory_map(tiny_config):
    """Past memory_limit_gb the decoded images live in a memory-mapped file the loader reads batch by batch."""
    from pneumo_ml.train import prepare_data, run_experiment
    cfg = tiny_config(memory_limit_gb=1e-6, register=False)
    data = prepare_data(cfg, progress=False)
    assert all(isinstance(images, np.memmap) for images in data.images.values())
    in_memory = prepare_data(tiny_config(), progress=False)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(data.images[name]), in_memory.images[name])
    result = run_experiment(cfg, data=data, progress=False)
    assert len(result.history) == cfg.epochs and 0 <= result.metrics["test_auc"] <= 1
