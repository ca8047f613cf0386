"""Grad-CAM for 1-D signals, and Guided Grad-CAM (guided backprop x upsampled CAM)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgray.attribution.base import AttributionMethod, register_method
from ecgray.attribution.fast import target_grads
from ecgray.attribution.guided_backprop import _check_relus, _check_relus_run, guided_relus
from ecgray.attribution.occlusion import inner_model

INTERPOLATE_MODES = ("linear", "nearest")


def _first_tensor(out: Any) -> torch.Tensor | None:
    """A module's output, or the first element of a tuple output (``ResidualUnit`` returns ``(x, y)``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def auto_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module, in execution order, whose output (first tensor of a tuple output)
    is 3-D ``(N, channels, length)`` with ``length > 1`` -- the last feature map before the
    classifier (for ``ResNet1d``: the last residual unit, ``"units.3"``). Found with one probe
    forward of ``x[:1]`` (no gradients) with forward hooks on every submodule."""
    fired: list[str] = []

    def hook(name):
        def fn(_m, _i, out):
            t = _first_tensor(out)
            if t is not None and t.ndim == 3 and t.shape[-1] > 1:
                fired.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not fired:
        raise ValueError(f"{type(model).__name__} has no submodule with a 3-D (N, channels, length) output of length "
                         "> 1: Grad-CAM needs a feature map; pass layer='<dotted module name>'")
    return fired[-1]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"layer {name!r} is not a submodule of {type(model).__name__}; "
                         f"some names: {names[-12:]}") from None


@contextlib.contextmanager
def capture(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside: the outputs (first tensor of a tuple output) of every call of ``module`` are appended to the list."""
    acts: list[torch.Tensor] = []

    def hook(_m, _i, out):
        t = _first_tensor(out)
        if t is not None:
            acts.append(t)

    handle = module.register_forward_hook(hook)
    try:
        yield acts
    finally:
        handle.remove()


@register_method
class GradCAM(AttributionMethod):
    r"""Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) for 1-D signals,
    as Captum's ``LayerGradCam`` followed by ``LayerAttribution.interpolate``. With the
    activations ``A`` ``(channels, L')`` of ``layer`` and the target output ``f``::

        w_c   = mean_l  df / dA_{c,l}
        cam_l = relu( sum_c w_c A_{c,l} )          (relu=False: without the relu)
        R_{lead,i} = upsample(cam)_i  for every lead

    ``upsample`` is ``F.interpolate(..., size=L, mode=interpolate_mode)`` (``"linear"``,
    ``align_corners=False``, or ``"nearest"``, Captum's default). **Grad-CAM has no lead
    resolution**: the feature map mixes all leads, so the same map is assigned to every
    lead (not divided by the number of leads: ``R[:, t, lead]`` is the CAM itself, as
    Captum broadcasts it in ``GuidedGradCam``; the sum over leads is ``n_leads`` times the
    CAM's). Its time resolution is the layer's: 16 points for the last unit of the
    published ``ResNet1d`` (4,096 samples), i.e. one per 256 samples (0.64 s).

    ``layer``: ``"auto"`` (default) -- the last module, in execution order, whose output
    is 3-D ``(N, channels, length)`` with ``length > 1`` (for ``ResNet1d`` the last
    residual unit ``"units.3"``; for a module returning a tuple, its first element) --
    or a dotted submodule name of the model (``"units.2"``, ``"units.3.relu2"``). The
    layer must be called once per forward. The resolved name is in the provenance
    (``layer_resolved``).

    One forward per chunk of records, one backward per target to ``A`` (fast path); the
    rows path does the same per row. No delta.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: unused (deterministic method).
        layer: ``"auto"`` or a dotted module name (see above).
        relu: apply the ReLU to the weighted sum (True, Grad-CAM's and Captum's
            ``relu_attributions``); False keeps negative evidence.
        interpolate_mode: ``"linear"`` (default) or ``"nearest"``.
    """

    name = "grad_cam"
    aliases = ("gradcam", "layer_grad_cam", "layergradcam")
    shared_targets = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        layer: str = "auto",
        relu: bool = True,
        interpolate_mode: str = "linear",
    ) -> None:
        super().__init__(forward, params, seed=seed, layer=layer, relu=relu, interpolate_mode=interpolate_mode)
        self._init_layer()

    def _init_layer(self) -> None:
        self._layer_name: str | None = None if self.params["layer"] == "auto" else str(self.params["layer"])
        self._layer: nn.Module | None = None
        if self._layer_name is not None:
            self._layer = get_layer(inner_model(self.forward), self._layer_name)

    @classmethod
    def check_params(cls, params):
        p = dict(params)
        if not isinstance(p["layer"], str) or not p["layer"]:
            raise ValueError("layer must be 'auto' or a dotted module name")
        if p["interpolate_mode"] not in INTERPOLATE_MODES:
            raise ValueError(f"interpolate_mode must be one of {INTERPOLATE_MODES}")
        if "relu" in p:
            p["relu"] = bool(p["relu"])
        return p

    def provenance(self):
        out = super().provenance()
        out["layer_resolved"] = self._layer_name
        return out

    def _module(self, x: torch.Tensor) -> nn.Module:
        if self._layer is None:
            model = inner_model(self.forward)
            self._layer_name = auto_layer(model, x)
            self._layer = get_layer(model, self._layer_name)
        return self._layer

    def _upsample(self, cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``cam`` (rows, L') -> (rows, leads, L): interpolated to L, the same on each lead."""
        up = F.interpolate(cam[:, None], size=x.shape[-1], mode=self.params["interpolate_mode"])
        return up.expand(-1, x.shape[1], -1)

    def _cam(self, a: torch.Tensor, g: torch.Tensor, relu: bool) -> torch.Tensor:
        w = g.mean(dim=2, keepdim=True)
        cam = (w * a).sum(dim=1)
        return cam.clamp(min=0) if relu else cam

    def _forward_acts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self._module(x)
        xg = x.detach().requires_grad_(True)  # the graph to A needs one tensor requiring grad
        with capture(layer) as acts:
            out = self.forward(xg)
        if len(acts) != 1:
            raise ValueError(f"layer {self._layer_name!r} ran {len(acts)} times in one forward; Grad-CAM needs a "
                             "layer called once")
        a = acts[0]
        if a.ndim != 3:
            raise ValueError(f"layer {self._layer_name!r} outputs shape {tuple(a.shape)}; Grad-CAM needs "
                             "(N, channels, length)")
        return out, a

    def cams_records(self, x: torch.Tensor, targets: list[int], relu: bool) -> torch.Tensor:
        """Upsampled CAMs ``(records, T, leads, L)``: one forward, one backward per target."""
        out, a = self._forward_acts(x)
        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        last = len(targets) - 1
        for j, t in enumerate(targets):
            (g,) = torch.autograd.grad(out[:, int(t)].sum(), a, retain_graph=j < last)
            rel[:, j] = self._upsample(self._cam(a.detach(), g, relu), x)
        return rel

    def cams_rows(self, x: torch.Tensor, target: torch.Tensor, relu: bool) -> torch.Tensor:
        out, a = self._forward_acts(x)
        (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), a)
        return self._upsample(self._cam(a.detach(), g, relu), x)

    def attribute_records(self, x, targets, record):
        return self.cams_records(x, targets, bool(self.params["relu"])).detach(), None

    def attribute_rows(self, x, target, record):
        return self.cams_rows(x, target, bool(self.params["relu"])).detach(), None


@register_method
class GuidedGradCAM(GradCAM):
    r"""Guided Grad-CAM (Selvaraju et al. 2017), as Captum's ``GuidedGradCam``: the
    guided-backprop gradient (:class:`~ecgray.attribution.guided_backprop.GuidedBackprop`)
    times the upsampled, ReLU'd Grad-CAM map of ``layer``::

        R_{lead,i} = GBP_{lead,i} * upsample(relu(sum_c w_c A_c))_i

    The CAM (plain gradients) and the guided gradient (guided ReLUs) come from two
    separate forwards, as in Captum. The CAM is the same on every lead, so the lead
    resolution comes from the guided gradient only. Parameters as :class:`GradCAM`,
    without ``relu`` (always applied, as in Captum). Needs ``nn.ReLU`` modules (see
    :class:`~ecgray.attribution.guided_backprop.GuidedBackprop`).
    """

    name = "guided_grad_cam"
    aliases = ("guidedgradcam", "guided_gradcam")

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        layer: str = "auto",
        interpolate_mode: str = "linear",
    ) -> None:
        # AttributionMethod's __init__, not GradCAM's: the parameters are this class's (no relu)
        AttributionMethod.__init__(self, forward, params, seed=seed, layer=layer, interpolate_mode=interpolate_mode)
        self._init_layer()
        _check_relus(forward)
        self._probed = False

    def _probe(self, x: torch.Tensor) -> None:
        if not self._probed:
            _check_relus_run(self.forward, x)
            self._probed = True

    def attribute_records(self, x, targets, record):
        self._probe(x)
        rel = self.cams_records(x, targets, True)
        with guided_relus(self.forward):
            for j, g in target_grads(self.forward, x, targets):
                rel[:, j] = rel[:, j] * g
        return rel.detach(), None

    def attribute_rows(self, x, target, record):
        self._probe(x)
        cam = self.cams_rows(x, target, True)
        with guided_relus(self.forward):
            xg = x.detach().requires_grad_(True)
            out = self.forward(xg)
            (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
        return (cam * g).detach(), None


__all__ = ["GradCAM", "GuidedGradCAM"]
