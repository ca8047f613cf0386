"""PyTorch port of the residual network of Ribeiro et al. 2020 (Nat. Commun. 11:1760).

The layer graph follows the authors' Keras code (``model.py`` of
*automatic-ecg-diagnosis*) exactly, so that the official ``model.hdf5`` loads
into it and gives the same outputs:

* input ``(N, 4096, 12)`` in Keras, ``(N, 12, 4096)`` here (channels first);
* stem: Conv1D(64, 16, padding='same', no bias) -> BatchNorm -> ReLU;
* four pre-activation residual units with 128/196/256/320 filters that bring
  the time axis to 1024/256/64/16 samples; each unit::

      skip = [MaxPool(d)] -> [Conv1D(n_out, 1)]            (only where needed)
      x    = Conv1D(n_out, 16) -> BN -> ReLU -> Dropout
      x    = Conv1D(n_out, 16, stride=d)
      x    = x + skip ; y = x                               (new skip input)
      x    = BN -> ReLU -> Dropout

* Flatten in Keras order (time major, then channel) -> Dense(6).

The sigmoid is *not* part of the module: ``forward`` returns logits so that
attributions can target the pre-sigmoid score; :func:`predict_proba` applies it.

Keras details that matter for exact parity:

* ``padding='same'`` pads ``total = max((ceil(n/s) - 1) * s + k - n, 0)``
  samples, ``total // 2`` on the left and the rest on the right; with an even
  kernel (16) this is asymmetric (7 left, 8 right at stride 1), which
  ``torch.nn.Conv1d(padding='same')`` does the other way round, so padding is
  explicit here;
* BatchNormalization epsilon is 1e-3 (PyTorch's default is 1e-5);
* Keras conv kernels are stored ``(k, in, out)``; torch wants ``(out, in, k)``
  (see :mod:`ecgray.models.keras`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

CLASSES: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")
LEADS: tuple[str, ...] = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
N_SAMPLES = 4096
FS = 400
KERAS_BN_EPS = 1e-3


def same_padding(n: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Left/right padding of Keras/TensorFlow ``padding='same'``."""
    out = math.ceil(n / stride)
    total = max((out - 1) * stride + kernel_size - n, 0)
    return total // 2, total - total // 2


class SameConv1d(nn.Conv1d):
    """``Conv1d`` with Keras ``padding='same'`` semantics (asymmetric for even kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        left, right = same_padding(x.shape[-1], self.kernel_size[0], self.stride[0])
        if left or right:
            x = F.pad(x, (left, right))
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameMaxPool1d(nn.Module):
    """``MaxPooling1D(pool, strides=pool, padding='same')``; pads with -inf like TF."""

    def __init__(self, pool: int):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        left, right = same_padding(x.shape[-1], self.pool, self.pool)
        if left or right:
            x = F.pad(x, (left, right), value=float("-inf"))
        return F.max_pool1d(x, self.pool, self.pool)


class ResidualAdd(nn.Module):
    """The residual addition ``x + skip`` of a :class:`ResidualUnit`, as a module.

    Parameter-free (no state-dict entries): a module instead of a ``+`` in
    ``ResidualUnit.forward`` only so that explanation methods can find and
    replace it -- LRP swaps it for a ``zennit.layer.Sum``-based module
    (:class:`ecgray.attribution.lrp.canonizers.ResidualSumCanonizer`).
    """

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + skip


class ResidualUnit(nn.Module):
    """One pre-activation residual unit; returns ``(x, y)`` like the Keras code."""

    def __init__(self, n_in: int, n_out: int, downsample: int, kernel_size: int = 16, dropout: float = 0.2):
        super().__init__()
        self.n_in, self.n_out, self.downsample = n_in, n_out, downsample
        self.skip_pool = SameMaxPool1d(downsample) if downsample > 1 else None
        self.skip_conv = SameConv1d(n_in, n_out, 1, bias=False) if n_in != n_out else None
        self.conv1 = SameConv1d(n_in, n_out, kernel_size, bias=False)
        self.bn1 = nn.BatchNorm1d(n_out, eps=KERAS_BN_EPS)
        self.relu1 = nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.conv2 = SameConv1d(n_out, n_out, kernel_size, stride=downsample, bias=False)
        self.add = ResidualAdd()
        self.bn2 = nn.BatchNorm1d(n_out, eps=KERAS_BN_EPS)
        self.relu2 = nn.ReLU()
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        if self.skip_pool is not None:
            y = self.skip_pool(y)
        if self.skip_conv is not None:
            y = self.skip_conv(y)
        x = self.drop1(self.relu1(self.bn1(self.conv1(x))))
        x = self.conv2(x)
        x = self.add(x, y)
        y = x
        x = self.drop2(self.relu2(self.bn2(x)))
        return x, y


@dataclass(frozen=True)
class ResNetConfig:
    """Hyper-parameters of :class:`ResNet1d`; the defaults are the published network."""

    n_leads: int = 12
    n_samples: int = N_SAMPLES
    n_classes: int = 6
    stem_filters: int = 64
    filters: tuple[int, ...] = (128, 196, 256, 320)
    samples: tuple[int, ...] = (1024, 256, 64, 16)
    kernel_size: int = 16
    dropout: float = 0.2
    classes: tuple[str, ...] = field(default=CLASSES)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ResNetConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def scaled(cls, width: float, **kw) -> "ResNetConfig":
        """The same topology with every filter count multiplied by ``width``."""
        base = cls(**kw)
        return cls(
            **{
                **kw,
                "stem_filters": max(1, round(base.stem_filters * width)),
                "filters": tuple(max(1, round(f * width)) for f in base.filters),
            }
        )


class ResNet1d(nn.Module):
    """The Ribeiro et al. 2020 ECG ResNet. ``forward(x[N, 12, 4096]) -> logits[N, 6]``."""

    def __init__(self, config: ResNetConfig | None = None):
        super().__init__()
        cfg = config or ResNetConfig()
        self.config = cfg
        self.classes = tuple(cfg.classes)
        self.conv1 = SameConv1d(cfg.n_leads, cfg.stem_filters, cfg.kernel_size, bias=False)
        self.bn1 = nn.BatchNorm1d(cfg.stem_filters, eps=KERAS_BN_EPS)
        self.relu = nn.ReLU()
        units = []
        n_in, t_in = cfg.stem_filters, cfg.n_samples
        for n_out, t_out in zip(cfg.filters, cfg.samples):
            if t_in % t_out:
                raise ValueError(f"time axis {t_in} is not a multiple of {t_out}")
            units.append(ResidualUnit(n_in, n_out, t_in // t_out, cfg.kernel_size, cfg.dropout))
            n_in, t_in = n_out, t_out
        self.units = nn.ModuleList(units)
        self.dense = nn.Linear(n_in * t_in, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.relu(self.bn1(self.conv1(x)))
        y = x
        for unit in self.units:
            x, y = unit(x, y)
        # Keras Flatten of a (time, channel) tensor is time-major.
        x = x.transpose(1, 2).flatten(1)
        return self.dense(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities, eval mode, no gradients."""
        return torch.sigmoid(self(x))


class ResNet2dView(nn.Module):
    """The same network, computed with 2-D convolutions on ``(N, C, 1, L)`` channels-last tensors.

    Inference only (BatchNorm uses its running statistics, dropout is off): for
    attributions. It holds the wrapped :class:`ResNet1d` (``.net``), whose parameters
    it uses as they are at each call.
    Why: oneDNN (CPU) and cuDNN (CUDA) have faster channels-last kernels for these
    convolutions than for the ``(N, C, L)`` layout (``ecgray bench`` measures it).

    What it guarantees, and what not:

    * forward: the outputs equal ``net.eval()(x)`` to float rounding (the faster kernels sum
      in another order: ~1e-7 relative; bit for bit where both layouts run the same
      kernels, e.g. ``torch.backends.mkldnn.flags(enabled=False)`` on the CPU);
    * backward: the gradient is the 1-D model's chain rule, same ops, same tie-breaking
      (the skip max-pools *are* the 1-D modules, see :meth:`_pool`), *given the same
      routing*: every max-pool window picks the same element and every ReLU input has the
      same sign. Where a window holds two values, or a ReLU input lies, within float rounding
      of a tie, the two forwards may resolve it differently; both are one-sided gradients of
      the same function, but that element's whole upstream gradient goes elsewhere. No
      pooling rule can prevent it (the inputs of the tie already differ by rounding), and it
      is common along an IG path: near the zero baseline the activations are almost constant
      in time, so pooling windows hold near-ties. Measured (width-0.25 test model, IG-8,
      CODE-15 records, oneDNN on, 2-core CPU): 10 of 20 record triples differ by more than
      1e-4 of the map's maximum (up to 9.5e-3); with the 1-D model's routing substituted
      (``tests/test_fast_path.py``), all 20 agree to 3e-7. Gradient maps of the view are
      therefore equal to the 1-D model's *up to tie routing*, not to float rounding.
    """

    def __init__(self, net: ResNet1d):
        super().__init__()
        self.net = net
        self.classes = net.classes

    @staticmethod
    def _conv(m: SameConv1d, x: torch.Tensor) -> torch.Tensor:
        left, right = same_padding(x.shape[-1], m.kernel_size[0], m.stride[0])
        if left or right:
            x = F.pad(x, (left, right))
        w = m.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, m.bias, (1, m.stride[0]))

    @staticmethod
    def _bn(m: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    @staticmethod
    def _pool(m: SameMaxPool1d, x: torch.Tensor) -> torch.Tensor:
        # the 1-D module itself: exact ties (zeros after ReLU, zero padding) meet the same kernel and
        # tie-break as in the 1-D model; near-ties can still route differently (see the class docstring)
        return m(x.squeeze(2).contiguous()).unsqueeze(2).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _relu(m: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
        # ``m`` (the 1-D model's module at this place) is unused here; it names the place for
        # subclasses that substitute the 1-D model's routing (tests/test_fast_path.py)
        return F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        n = self.net
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        x = self._relu(n.relu, self._bn(n.bn1, self._conv(n.conv1, x)))
        y = x
        for u in n.units:
            if u.skip_pool is not None:
                y = self._pool(u.skip_pool, y)
            if u.skip_conv is not None:
                y = self._conv(u.skip_conv, y)
            x = self._relu(u.relu1, self._bn(u.bn1, self._conv(u.conv1, x)))
            x = self._conv(u.conv2, x) + y
            y = x
            x = self._relu(u.relu2, self._bn(u.bn2, x))
        return n.dense(x.squeeze(2).transpose(1, 2).flatten(1))
