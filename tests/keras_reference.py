"""The authors' network rebuilt in Keras 3 (test helper, never imported by the library).

``build_keras_model`` follows ``model.py`` of *automatic-ecg-diagnosis* (Ribeiro et
al. 2020) layer for layer with the functional API; ``randomize`` gives it seeded
random weights *and* non-trivial BatchNorm statistics, and ``write_keras2_hdf5``
writes a file in the Keras 2.2.4 layout (the layout of the official
``model.hdf5``) by hand with h5py.

Import only after ``os.environ["KERAS_BACKEND"] = "torch"`` (done here too, in
case this module is the first to import keras).
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402


def conv1d_same(x, filters, kernel_size, strides, explicit_padding=False):
    """``Conv1D(padding='same')``, or the same thing as ``ZeroPadding1D((l, r))`` + ``padding='valid'``."""
    if not explicit_padding:
        return layers.Conv1D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal")(x)
    n = x.shape[1]
    total = max((-(-n // strides) - 1) * strides + kernel_size - n, 0)
    x = layers.ZeroPadding1D((total // 2, total - total // 2))(x)
    return layers.Conv1D(filters, kernel_size, strides=strides, padding="valid", use_bias=False,
                         kernel_initializer="he_normal")(x)


class ResidualUnit:
    """The authors' ``ResidualUnit`` (Keras 2 code ported to Keras 3, same graph)."""

    def __init__(self, n_samples_out, n_filters_out, kernel_initializer="he_normal",
                 dropout_keep_prob=0.8, kernel_size=16, preactivation=True,
                 postactivation_bn=False, activation_function="relu", explicit_padding=False):
        self.n_samples_out = n_samples_out
        self.n_filters_out = n_filters_out
        self.kernel_initializer = kernel_initializer
        self.dropout_rate = 1 - dropout_keep_prob
        self.kernel_size = kernel_size
        self.preactivation = preactivation
        self.postactivation_bn = postactivation_bn
        self.activation_function = activation_function
        self.explicit_padding = explicit_padding

    def _skip_connection(self, y, downsample, n_filters_in):
        if downsample > 1:
            y = layers.MaxPooling1D(downsample, strides=downsample, padding="same")(y)
        elif downsample != 1:
            raise ValueError("Number of samples should always decrease.")
        if n_filters_in != self.n_filters_out:
            y = layers.Conv1D(self.n_filters_out, 1, padding="same", use_bias=False,
                              kernel_initializer=self.kernel_initializer)(y)
        return y

    def _batch_norm_plus_activation(self, x):
        if self.postactivation_bn:
            x = layers.Activation(self.activation_function)(x)
            x = layers.BatchNormalization(center=False, scale=False)(x)
        else:
            x = layers.BatchNormalization()(x)
            x = layers.Activation(self.activation_function)(x)
        return x

    def __call__(self, inputs):
        x, y = inputs
        n_samples_in = y.shape[1]
        downsample = n_samples_in // self.n_samples_out
        n_filters_in = y.shape[2]
        y = self._skip_connection(y, downsample, n_filters_in)
        x = conv1d_same(x, self.n_filters_out, self.kernel_size, 1, self.explicit_padding)
        x = self._batch_norm_plus_activation(x)
        if self.dropout_rate > 0:
            x = layers.Dropout(self.dropout_rate)(x)
        x = conv1d_same(x, self.n_filters_out, self.kernel_size, downsample, self.explicit_padding)
        if self.preactivation:
            x = layers.Add()([x, y])
            y = x
            x = self._batch_norm_plus_activation(x)
            if self.dropout_rate > 0:
                x = layers.Dropout(self.dropout_rate)(x)
        else:  # pragma: no cover - not the published variant
            x = layers.BatchNormalization()(x)
            x = layers.Add()([x, y])
            x = layers.Activation(self.activation_function)(x)
            if self.dropout_rate > 0:
                x = layers.Dropout(self.dropout_rate)(x)
            y = x
        return [x, y]


def build_keras_model(*, stem_filters=64, filters=(128, 196, 256, 320), samples=(1024, 256, 64, 16),
                      n_samples=4096, n_leads=12, n_classes=6, kernel_size=16,
                      explicit_padding=False) -> keras.Model:
    """``get_model(n_classes)`` of the authors, with the widths as parameters.

    ``explicit_padding``: every 'same' convolution with kernel > 1 becomes
    ``ZeroPadding1D((left, right))`` + ``Conv1D(padding='valid')`` (same function).
    """
    signal = keras.Input(shape=(n_samples, n_leads), dtype="float32", name="signal")
    x = conv1d_same(signal, stem_filters, kernel_size, 1, explicit_padding)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    kw = {"kernel_size": kernel_size, "explicit_padding": explicit_padding}
    x, y = ResidualUnit(samples[0], filters[0], **kw)([x, x])
    for s, f in zip(samples[1:-1], filters[1:-1]):
        x, y = ResidualUnit(s, f, **kw)([x, y])
    x, _ = ResidualUnit(samples[-1], filters[-1], **kw)([x, y])
    x = layers.Flatten()(x)
    diagn = layers.Dense(n_classes, activation="sigmoid", kernel_initializer="he_normal")(x)
    return keras.Model(signal, diagn)


def randomize(model: keras.Model, seed: int = 0, dense_scale: float = 1.0) -> None:
    """Seeded random weights with non-trivial BatchNorm statistics.

    Conv kernels: He-normal; BN gamma ~ U(0.5, 1.5), beta ~ N(0, 0.2),
    moving_mean ~ N(0, 0.5), moving_variance ~ U(0.5, 2); Dense kernel
    He-normal times ``dense_scale`` (small, so the sigmoid is not saturated),
    bias ~ N(0, 0.1).
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.Conv1D):
            (kernel,) = layer.get_weights()
            fan_in = kernel.shape[0] * kernel.shape[1]
            layer.set_weights([rng.normal(0, np.sqrt(2 / fan_in), kernel.shape).astype("float32")])
        elif isinstance(layer, layers.BatchNormalization):
            n = layer.get_weights()[-1].shape[0]
            values = []
            if layer.scale:
                values.append(rng.uniform(0.5, 1.5, n))
            if layer.center:
                values.append(rng.normal(0, 0.2, n))
            values += [rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)]
            layer.set_weights([v.astype("float32") for v in values])
        elif isinstance(layer, layers.Dense):
            kernel, bias = layer.get_weights()
            k = rng.normal(0, np.sqrt(2 / kernel.shape[0]), kernel.shape) * dense_scale
            layer.set_weights([k.astype("float32"), rng.normal(0, 0.1, bias.shape).astype("float32")])


def logits_model(model: keras.Model) -> keras.Model:
    """The same graph (shared layers) ending at the Dense pre-activation."""
    dense = model.layers[-1]
    flat = dense.input
    pre = layers.Dense(dense.units, activation=None, name="logits")
    out = pre(flat)
    pre.set_weights(dense.get_weights())
    return keras.Model(model.input, out)


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Forward (N, T, C) float32 through a Keras model, eval mode, as NumPy."""
    out = model(x.astype("float32"), training=False)
    return keras.ops.convert_to_numpy(out)


# --------------------------------------------------------------------------- Keras 2.2 file
_KERAS2_CLASS = {
    "InputLayer", "Conv1D", "BatchNormalization", "Activation", "Dropout",
    "MaxPooling1D", "Add", "Flatten", "Dense", "ZeroPadding1D",
}
_KERAS2_PREFIX = {
    "Conv1D": "conv1d", "BatchNormalization": "batch_normalization", "Activation": "activation",
    "Dropout": "dropout", "MaxPooling1D": "max_pooling1d", "Add": "add", "Flatten": "flatten",
    "Dense": "dense", "ZeroPadding1D": "zero_padding1d",
}


def _keras2_layer_config(layer) -> dict:
    cls = type(layer).__name__
    if cls == "Conv1D":
        return {"filters": layer.filters, "kernel_size": list(layer.kernel_size),
                "strides": list(layer.strides), "padding": layer.padding,
                "data_format": "channels_last", "dilation_rate": [1], "activation": "linear",
                "use_bias": layer.use_bias,
                "kernel_initializer": {"class_name": "VarianceScaling",
                                       "config": {"scale": 2.0, "mode": "fan_in",
                                                  "distribution": "normal", "seed": None}},
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "kernel_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}
    if cls == "BatchNormalization":
        return {"axis": -1, "momentum": 0.99, "epsilon": layer.epsilon, "center": layer.center,
                "scale": layer.scale}
    if cls == "Activation":
        return {"activation": "relu"}
    if cls == "Dropout":
        return {"rate": layer.rate, "noise_shape": None, "seed": None}
    if cls == "MaxPooling1D":
        return {"pool_size": list(layer.pool_size), "strides": list(layer.strides),
                "padding": layer.padding, "data_format": "channels_last"}
    if cls == "ZeroPadding1D":
        return {"padding": list(layer.padding)}
    if cls == "Dense":
        return {"units": layer.units, "activation": "sigmoid", "use_bias": True}
    return {}


def write_keras2_hdf5(model: keras.Model, path, *, rename=None, shuffle_seed: int | None = None,
                      weights_only: bool = False, nested_weight_names: bool = False) -> dict:
    """Write ``model`` in the Keras 2.2.4 HDF5 layout, by hand with h5py.

    Layers get Keras-2 style names (``conv1d_1``, ``batch_normalization_1``,
    ``max_pooling1d_1``, ``add_1``, ``dense_1`` ...) in creation order, then
    ``rename(old_name, index) -> new_name`` if given (to prove the loader goes by
    topology). ``shuffle_seed`` shuffles the order of ``layer_names`` and of the
    layers in ``model_config``. ``weights_only`` writes the layout of
    ``model.save_weights`` (``layer_names`` at the root, no ``model_config``).
    ``nested_weight_names`` stores weights one group deeper, as
    ``<layer>/<layer>/<sub>/kernel:0`` (seen in files with wrapped layers).
    Returns ``{keras3_name: keras2_name}``.
    """
    counters: dict[str, int] = {}
    names: dict[str, str] = {}
    for i, layer in enumerate(model.layers):
        cls = type(layer).__name__
        if cls not in _KERAS2_CLASS:
            raise ValueError(f"unexpected layer {cls}")
        if cls == "InputLayer":
            new = layer.name
        else:
            prefix = _KERAS2_PREFIX[cls]
            counters[prefix] = counters.get(prefix, 0) + 1
            new = f"{prefix}_{counters[prefix]}"
        if rename is not None:
            new = rename(new, i)
        names[layer.name] = new

    cfg_layers = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            conf = {"batch_input_shape": [None, *layer.batch_shape[1:]], "dtype": "float32",
                    "sparse": False, "name": names[layer.name]}
            inbound = []
        else:
            conf = {"name": names[layer.name], "trainable": True, **_keras2_layer_config(layer)}
            node = layer._inbound_nodes[0]
            inbound = [[[names[t._keras_history.operation.name], 0, t._keras_history.tensor_index, {}]
                        for t in node.input_tensors]]
        cfg_layers.append({"name": names[layer.name], "class_name": cls, "config": conf,
                           "inbound_nodes": inbound})
    order = list(range(len(model.layers)))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
        cfg_layers = [cfg_layers[i] for i in order]
    out_name = names[model.layers[-1].name]
    model_config = {"class_name": "Model", "config": {
        "name": "model_1", "layers": cfg_layers,
        "input_layers": [[names[model.layers[0].name], 0, 0]],
        "output_layers": [[out_name, 0, 0]]}}

    with h5py.File(path, "w") as f:
        if weights_only:
            g = f
        else:
            # Keras 2 wrote ``str.encode('utf8')``: fixed-length byte strings (np.bytes_ in h5py 3).
            f.attrs["keras_version"] = np.bytes_(b"2.2.4")
            f.attrs["backend"] = np.bytes_(b"tensorflow")
            f.attrs["model_config"] = np.bytes_(json.dumps(model_config).encode("utf-8"))
            g = f.create_group("model_weights")
        g.attrs["keras_version"] = np.bytes_(b"2.2.4")
        g.attrs["backend"] = np.bytes_(b"tensorflow")
        g.attrs["layer_names"] = np.array([names[model.layers[i].name].encode() for i in order])
        for i in order:
            layer = model.layers[i]
            lname = names[layer.name]
            lg = g.create_group(lname)
            cls = type(layer).__name__
            values = layer.get_weights()
            if cls == "Conv1D" or (cls == "Dense"):
                sub = ["kernel:0", "bias:0"][: len(values)]
            elif cls == "BatchNormalization":
                sub = (["gamma:0"] if layer.scale else []) + (["beta:0"] if layer.center else []) \
                    + ["moving_mean:0", "moving_variance:0"]
            else:
                sub = []
            prefix = f"{lname}/{lname}/" if nested_weight_names else f"{lname}/"
            wnames = [prefix + s for s in sub]
            lg.attrs["weight_names"] = np.array([w.encode() for w in wnames], dtype="S")
            for w, v in zip(wnames, values):
                lg.create_dataset(w, data=v)
    return names
