import pytest
import torch

from pneumo_ml.models import MODELS, WeightsError, create_model, gradcam_layer, normalization


@pytest.mark.parametrize("name, size", [("small_cnn", 32), ("resnet50", 32), ("densenet121", 32), ("vit_tiny", 32)])
def test_every_model_makes_two_logits_and_knows_its_cam_layer_and_normalisation(name, size):
    model = create_model(name, "false", image_size=size)
    assert model.weights_source == "random"
    assert model(torch.randn(2, 3, size, size)).shape == (2, 2)
    assert isinstance(gradcam_layer(name, model), torch.nn.Module)
    mean, std = normalization(model)
    assert len(mean) == len(std) == 3
    if name == "vit_tiny":
        assert mean == (0.5, 0.5, 0.5)  # timm's ViT config, not ImageNet's
    elif name != "small_cnn":
        assert mean == pytest.approx((0.485, 0.456, 0.406))


def test_weights_file_written_by_the_test_is_loaded_and_fingerprinted(tmp_path):
    import hashlib
    source = create_model("small_cnn", "false")
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = create_model("small_cnn", "false", weights=path)
    assert model.weights_source == f"file:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_imagenet_head_in_a_weights_file_is_replaced_by_a_fresh_two_class_head(tmp_path):
    import timm
    imagenet = timm.create_model("resnet50", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet50_in1k.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("resnet50", "true", weights=path)
    torch.testing.assert_close(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 2 and model.weights_source.startswith("file:")


def test_bad_weights_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        create_model("small_cnn", "false", weights=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        create_model("small_cnn", "false", weights=junk)
    other = tmp_path / "other.pt"
    torch.save(create_model("small_cnn", "false").state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit this model"):
        create_model("resnet50", "false", weights=other)


def test_pickled_objects_are_refused_by_weights_only_loading(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(WeightsError, match="holds pickled Python objects, which pneumo-ml never loads") as info:
        create_model("small_cnn", "false", weights=path)
    assert "weights_only=False" not in str(info.value)  # torch's advice would run the file's code


def test_pretrained_true_offline_fails_fast_naming_both_ways_out(monkeypatch, tmp_path):
    import time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_model("resnet50", "true", image_size=32)
    assert time.monotonic() - start < 10
    assert "--weights FILE" in str(info.value) and "--pretrained false" in str(info.value)
    with pytest.raises(WeightsError, match="small_cnn has no pretrained weights"):
        create_model("small_cnn", "true")


def test_pretrained_auto_offline_warns_loudly_and_trains_from_random(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = create_model("vit_tiny", "auto", image_size=32)
    assert model.weights_source == "random"


def test_pretrained_weights_found_in_the_local_hub_cache_are_used(monkeypatch, tmp_path):
    """A weights file placed in the hub cache layout is found offline and logged as timm:<tag>."""
    import timm
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = timm.create_model("resnet50", pretrained=False)
    snapshot = cache / "models--timm--resnet50.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (cache / "models--timm--resnet50.a1_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet50.a1_in1k" / "refs" / "main").write_text("abc")
    from safetensors.torch import save_file
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    model = create_model("resnet50", "true", image_size=32)
    assert model.weights_source == "timm:resnet50.a1_in1k"
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        create_model("resnet18")
    assert set(MODELS) == {"small_cnn", "resnet50", "vit_tiny", "densenet121"}
