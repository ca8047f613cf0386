"""The Ribeiro et al. 2020 ECG ResNet in PyTorch, its weight loaders and the model registry."""
from ecgray.models.keras import load_keras_hdf5
from ecgray.models.registry import available_models, load_model, register_model
from ecgray.models.ribeiro2020 import CLASSES, FS, LEADS, N_SAMPLES, ResNet1d, ResNetConfig
from ecgray.models.weights import load_model_file, model_id, save_model

__all__ = [
    "CLASSES",
    "FS",
    "LEADS",
    "N_SAMPLES",
    "ResNet1d",
    "ResNetConfig",
    "available_models",
    "load_keras_hdf5",
    "load_model",
    "load_model_file",
    "model_id",
    "register_model",
    "save_model",
]
