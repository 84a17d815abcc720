"""Model registry, CIFAR architectures and checkpoint loading (incl. the exact akamaster loading proof)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.fx
import torchvision
from torch import nn

from legr.errors import CheckpointError, LegrError
from legr.models import (
    PadShortcut,
    build_model,
    file_fingerprint,
    get_model_spec,
    list_models,
    load_checkpoint,
    pretrained_path,
    read_state_dict,
    register_model,
    save_state_dict,
)

CIFAR_MODELS = [n for n in list_models() if n.startswith("cifar_")]
OWN_MODELS = [n for n in list_models() if get_model_spec(n).source == "legr"]
AKAMASTER = "weights/akamaster-cifar10"


def _cifar_exact(shared):
    d = np.load(shared("data", "cifar10-test-exact-first1017.npz"))
    x = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(d["labels"]).long()


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# --- exact loading proof ---------------------------------------------------------------------------------------


PROOFS = [("cifar_resnet20", "resnet20-12fca82f.th", 91.0), ("cifar_resnet56", "resnet56-4bfd9763.th", 92.0)]


@pytest.mark.parametrize("name,file,min_acc", PROOFS)
def test_akamaster_top1_on_exact_cifar10(shared, name, file, min_acc):
    x, y = _cifar_exact(shared)
    model = load_checkpoint(build_model(name), shared(AKAMASTER, file)).eval()
    with torch.no_grad():
        acc = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    print(f"{name} (akamaster) top-1 on the {len(y)} exact CIFAR-10 test images: {acc:.2f}%")  # pytest -s shows it
    assert acc >= min_acc, f"{name}: {acc:.2f}%"


def test_build_model_pretrained_true_uses_weights_dir(shared):
    path = shared(AKAMASTER, "resnet20-12fca82f.th")
    assert pretrained_path("cifar_resnet20").resolve() == path.resolve()
    model = build_model("cifar_resnet20", pretrained=True)
    ref = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.linear.weight, ref["module.linear.weight"])


def test_state_dict_keys_are_akamasters(shared):
    ref = read_state_dict(shared(AKAMASTER, "resnet56-4bfd9763.th"))
    own = {k for k in build_model("cifar_resnet56").state_dict() if not k.endswith("num_batches_tracked")}
    assert {k.removeprefix("module.") for k in ref} == own


def test_pretrained_missing_file_says_where_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGR_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointError) as exc:
        build_model("cifar_resnet32", pretrained=True)
    msg = _one_line_error(exc)
    assert str(tmp_path.resolve()) in msg and "LEGR_WEIGHTS" in msg and "resnet32-d509ac18.th" in msg
    with pytest.raises(CheckpointError, match="no pretrained weights"):
        pretrained_path("cifar_vgg16_bn")


# --- architectures -----------------------------------------------------------------------------------------------


def test_param_counts():
    count = lambda name: sum(p.numel() for p in build_model(name).parameters())  # noqa: E731
    assert count("cifar_resnet20") == 269722
    assert count("cifar_resnet56") == 853018
    assert count("cifar_resnet20_b") == 272474  # + 1x1 conv+BN shortcuts in stages 2 and 3


@pytest.mark.parametrize("name", OWN_MODELS)
def test_own_models_forward_and_fx_trace(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    x = torch.randn(2, *get_model_spec(name).input_size)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 7)
        assert torch.allclose(traced(x), out)


def test_cifar_model_list():
    expected = {f"cifar_resnet{d}{s}" for d in (20, 32, 44, 56, 110) for s in ("", "_b")}
    assert set(CIFAR_MODELS) == expected | {"cifar_vgg16_bn", "cifar_mobilenet_v2"}


def test_option_a_shortcut_pads_channels():
    planes, pad = 32, 8
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(planes)(x)
    assert out.shape == (2, planes, 4, 4)
    for j in range(16):
        assert torch.equal(out[:, j + pad], x[:, j, ::2, ::2])
    assert not out[:, :pad].any() and not out[:, pad + 16 :].any()
    graph = torch.fx.symbolic_trace(PadShortcut(planes)).graph
    assert not [n for n in graph.nodes if n.op == "call_module"]  # plain slicing + F.pad


def test_shortcut_layout_in_models():
    a = build_model("cifar_resnet20")
    assert isinstance(a.layer2[0].shortcut, PadShortcut) and a.layer2[0].shortcut.pad == 8
    assert isinstance(a.layer1[0].shortcut, nn.Identity) and a.layer3[0].shortcut.pad == 16
    assert not [k for k in a.state_dict() if "shortcut" in k]
    b = build_model("cifar_resnet20_b").state_dict()
    assert {"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_mean", "layer3.0.shortcut.0.weight"} <= set(b)
    assert b["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)


def test_mobilenet_v2_residuals_identity_only():
    from legr.models.cifar_mobilenetv2 import InvertedResidual

    blocks = [m for m in build_model("cifar_mobilenet_v2").modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_residual for b in blocks) == 10  # (2-1)+(3-1)+(4-1)+(3-1)+(3-1) repeated blocks


# --- registry ----------------------------------------------------------------------------------------------------


def test_registry_has_every_torchvision_classifier():
    names = set(list_models())
    tv = torchvision.models.list_models(module=torchvision.models)
    assert set(tv) <= names and "resnet18" in names
    assert get_model_spec("resnet50").input_size == (3, 224, 224) and get_model_spec("resnet50").num_classes == 1000
    assert get_model_spec("inception_v3").input_size == (3, 299, 299)
    assert get_model_spec("cifar_resnet56").input_size == (3, 32, 32)
    assert build_model("resnet18", num_classes=10).fc.out_features == 10


def test_spec_is_frozen_and_registration_unique():
    spec = get_model_spec("cifar_resnet20")
    assert spec.name == "cifar_resnet20" and spec.num_classes == 10 and spec.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 100
    with pytest.raises(ValueError):
        register_model("cifar_resnet20", num_classes=10, input_size=(3, 32, 32), description="dup")(lambda **k: None)


def test_unknown_model_suggests_close_names():
    with pytest.raises(LegrError) as exc:
        build_model("cifar_resnet21")
    msg = _one_line_error(exc)
    assert "cifar_resnet21" in msg and "cifar_resnet20" in msg
    with pytest.raises(LegrError, match="list_models"):
        get_model_spec("zzzz")


# --- checkpoint loading -------------------------------------------------------------------------------------------


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


WRAPPINGS = ["module.", "_orig_mod.", "module._orig_mod.", "state_dict", "model", "model_state_dict"]


@pytest.mark.parametrize("wrap", WRAPPINGS)
def test_prefixes_and_wrappers(tmp_path, wrap):
    src = build_model("cifar_resnet20")
    sd = src.state_dict()
    obj = {wrap: sd} if not wrap.endswith(".") else {wrap + k: v for k, v in sd.items()}
    torch.save(obj, tmp_path / "ck.pth")
    assert _same_weights(src, load_checkpoint(build_model("cifar_resnet20"), tmp_path / "ck.pth"))


def test_safetensors_roundtrip_and_fingerprint(tmp_path):
    src = build_model("cifar_resnet20")
    path = tmp_path / "sub" / "m.safetensors"
    save_state_dict(src.state_dict(), path)
    assert _same_weights(src, build_model("cifar_resnet20", pretrained=path))
    fp = file_fingerprint(path)
    assert len(fp) == 16 and int(fp, 16) >= 0 and fp == file_fingerprint(path)
    save_state_dict(build_model("cifar_resnet20").state_dict(), tmp_path / "other.safetensors")
    assert file_fingerprint(tmp_path / "other.safetensors") != fp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_wrong_depth_names_missing_keys(tmp_path):
    torch.save({"state_dict": build_model("cifar_resnet20").state_dict()}, tmp_path / "r20.th")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(build_model("cifar_resnet32"), tmp_path / "r20.th")
    msg = _one_line_error(exc)
    assert "missing" in msg and "layer1.3.conv1.weight" in msg and "more)" in msg
    with pytest.raises(CheckpointError, match="unexpected.*layer1.3.conv1.weight"):
        load_checkpoint(build_model("cifar_resnet20"), _save(tmp_path, build_model("cifar_resnet32").state_dict()))
    # strict=False tolerates extra keys
    load_checkpoint(build_model("cifar_resnet20"), tmp_path / "sd.pt", strict=False)


def _save(tmp_path, sd, name="sd.pt"):
    torch.save(sd, tmp_path / name)
    return tmp_path / name


def test_shape_mismatch_names_key(tmp_path):
    path = _save(tmp_path, build_model("cifar_resnet20", num_classes=100).state_dict())
    for strict in (True, False):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(build_model("cifar_resnet20"), path, strict=strict)
        msg = _one_line_error(exc)
        assert "shape" in msg and "linear.weight" in msg and "(100, 64)" in msg


def test_missing_and_corrupt_files(tmp_path, shared):
    model = build_model("cifar_resnet20")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "nope.th")
    with pytest.raises(CheckpointError, match="not found"):
        file_fingerprint(tmp_path / "nope.th")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint" * 10)
    (tmp_path / "junk2.pt").write_bytes(b"garbage" * 10)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "cut.th").write_bytes(shared(AKAMASTER, "resnet20-12fca82f.th").read_bytes()[:5000])
    for name in ("junk.pth", "junk2.pt", "empty.ckpt", "junk.safetensors", "cut.th"):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(model, tmp_path / name)
        assert "cannot read" in _one_line_error(exc)


class _Payload:
    """Unpickling this runs ``touch <marker>`` (through os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("suffix", [".pt", ".th"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, suffix):
    """Issue #11: the payload must not run, the message must name the object and never suggest weights_only=False."""
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(build_model("cifar_resnet20"), path)
    msg = _one_line_error(exc)
    assert not marker.exists()
    assert "pickled Python objects" in msg and "system" in msg and "refused for safety" in msg
    assert "weights_only" not in msg and "False" not in msg


def test_unsafe_pickle_and_non_tensor_contents(tmp_path):
    torch.save(build_model("cifar_resnet20"), tmp_path / "whole.pt")  # a pickled nn.Module needs weights_only=False
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(build_model("cifar_resnet20"), tmp_path / "whole.pt")
    msg = _one_line_error(exc)
    assert "pickled Python objects" in msg and "CifarResNet" in msg and "weights_only" not in msg
    with pytest.raises(CheckpointError, match="non-tensor"):
        load_checkpoint(build_model("cifar_resnet20"), _save(tmp_path, {"epoch": 3, "lr": 0.1}))


# --- bring your own model: a factory the user names (issue 32, item 5) ------------------------------------------
def test_a_factory_in_an_importable_module_builds_the_users_model(tmp_path, monkeypatch):
    from legr.models import build_from_factory

    (tmp_path / "user_models_pkg").mkdir()
    (tmp_path / "user_models_pkg" / "__init__.py").write_text("")
    (tmp_path / "user_models_pkg" / "nets.py").write_text(
        "from torch import nn\n"
        "def build(width, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(width, num_classes))\n"
        "class Zoo:\n"
        "    @staticmethod\n"
        "    def tiny(**kw):\n"
        "        return nn.Conv2d(3, 4, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_from_factory("user_models_pkg.nets:build", {"width": 5}, num_classes=7)
    assert net[0].out_channels == 5 and net[4].out_features == 7
    assert build_from_factory("user_models_pkg.nets:Zoo.tiny", num_classes=3).out_channels == 4  # **kw: num_classes
    torch.save(net.state_dict(), tmp_path / "w.pt")
    loaded = build_from_factory("user_models_pkg.nets:build", {"width": 5}, num_classes=7, pretrained=tmp_path / "w.pt")
    assert torch.equal(loaded[0].weight, net[0].weight)
    named = build_model("factory:user_models_pkg.nets:build", 7, tmp_path / "w.pt", width=5)  # by name: the CLI's form
    assert torch.equal(named[0].weight, net[0].weight) and named[4].out_features == 7
    with pytest.raises(LegrError, match=r"^model factory 'user_models_pkg\.nets': expected 'package\.module:callable'"):
        build_from_factory("user_models_pkg.nets")
    with pytest.raises(LegrError, match=r"^model factory 'user_models_pkg\.nets:build' raised TypeError"):
        build_from_factory("user_models_pkg.nets:build", {})
