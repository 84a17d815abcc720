"""Model registry (CIFAR ResNets / VGG / MobileNetV2 and every torchvision classifier) and safe checkpoint I/O."""

from legr.models import cifar_mobilenetv2, cifar_resnet, cifar_vgg, small, torchvision_models  # noqa: F401  (register)
from legr.models.checkpoint import (
    file_fingerprint,
    load_checkpoint,
    load_state_dict,
    read_state_dict,
    save_state_dict,
    strip_prefixes,
)
from legr.models.cifar_resnet import CifarResNet, PadShortcut
from legr.models.registry import (
    ModelSpec,
    build_from_factory,
    build_model,
    get_model_spec,
    list_models,
    model_from_options,
    pretrained_path,
    register_model,
)

__all__ = [
    "CifarResNet",
    "ModelSpec",
    "PadShortcut",
    "build_from_factory",
    "build_model",
    "file_fingerprint",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "load_state_dict",
    "model_from_options",
    "pretrained_path",
    "read_state_dict",
    "register_model",
    "save_state_dict",
    "strip_prefixes",
]
