"""Attributions for the ECG classifier: Captum gradient and perturbation methods, Grad-CAM, and Zennit LRP.

>>> from ecgray.attribution import attribute, Attribution, METHODS, available_methods
>>> res = attribute(model, x, targets=["AF"], method="ig", n_steps=32)

=====================  ===========================  ==============================================
name                   aliases                      what
=====================  ===========================  ==============================================
integrated_gradients   ig, integratedgradients      Captum ``IntegratedGradients``; delta = sum(R) - (f(x) - f(b))
saliency               --                           Captum ``Saliency`` (``abs=True`` by default)
input_x_gradient       ixg, inputxgradient          Captum ``InputXGradient``
deeplift               deep_lift                    Captum ``DeepLift`` (rescale rule, zero baseline); delta as IG
gradient_shap          gradientshap, gradshap       expected gradients over random baselines (GradientShap)
lrp_epsilon            lrp, lrp_eps                 Zennit LRP-epsilon (see :mod:`ecgray.attribution.lrp`)
lrp_alpha_beta         lrp_ab, lrp_alpha2_beta1     Zennit LRP-alpha-beta (alpha=2, beta=1)
occlusion              --                           sliding 1-D windows (lead x ``window_ms``) set to ``fill``; f(x) - f(occluded)
smoothgrad             noise_tunnel, noisetunnel    noise tunnel (SmoothGrad) around a gradient method (``base``)
guided_backprop        gbp, guidedbackprop          Captum ``GuidedBackprop`` (guided ReLU gradients)
grad_cam               gradcam, layer_grad_cam      1-D Grad-CAM of a layer, upsampled, same map on every lead
guided_grad_cam        guidedgradcam                Captum ``GuidedGradCam``: guided backprop x upsampled CAM
kernel_shap            kernelshap, kshap            Kernel SHAP over lead x window segments (exact when enumerable)
=====================  ===========================  ==============================================

Names are matched case-insensitively, ignoring ``_``, ``-`` and spaces, so
``"IntegratedGradients"``, ``"integrated-gradients"`` and ``"IG"`` all work.
Parameters keep Captum's names (``baselines``, ``n_steps``, ``internal_batch_size``,
``stdevs``, ...), with one exception: :func:`attribute` already has a ``method``
argument, so Captum's ``IntegratedGradients(method=...)`` (the quadrature rule) is
called ``integration_method`` here. ``baseline`` (IG, DeepLift) is a deprecated
alias of ``baselines``.

Modules, one per method as in Captum's ``captum/attr/_core/``:

* :mod:`ecgray.attribution.core` -- :func:`attribute` and :class:`Attribution`;
* :mod:`ecgray.attribution.base` -- :class:`AttributionMethod`, the registry, shared helpers;
* :mod:`ecgray.attribution.integrated_gradients`, :mod:`~ecgray.attribution.saliency`,
  :mod:`~ecgray.attribution.input_x_gradient`, :mod:`~ecgray.attribution.deeplift`,
  :mod:`~ecgray.attribution.gradient_shap` -- the Captum-family methods;
* :mod:`ecgray.attribution.occlusion`, :mod:`~ecgray.attribution.smoothgrad`,
  :mod:`~ecgray.attribution.guided_backprop`, :mod:`~ecgray.attribution.grad_cam`,
  :mod:`~ecgray.attribution.kernel_shap` -- occlusion, the noise tunnel, guided backprop,
  (guided) Grad-CAM, Kernel SHAP over segments;
* :mod:`ecgray.attribution.fast` -- the shared-target fast path;
* :mod:`ecgray.attribution.lrp` -- LRP rules, canonizers for ``ResNet1d``;
* :mod:`ecgray.attribution._zennit` -- importing zennit without torchvision;

Neither Captum nor Zennit is imported here; they load when a method runs.
"""
from ecgray.attribution.core import Attribution, attribute
from ecgray.attribution.base import METHODS, AttributionMethod, available_methods, register_method, resolve_method

# importing a method's module registers it; this order is the order of available_methods()
from ecgray.attribution.integrated_gradients import IntegratedGradients
from ecgray.attribution.saliency import Saliency
from ecgray.attribution.input_x_gradient import InputXGradient
from ecgray.attribution.deeplift import DeepLift
from ecgray.attribution.gradient_shap import GradientShap
from ecgray.attribution import lrp as _lrp  # noqa: F401  (registers lrp_epsilon, lrp_alpha_beta)
from ecgray.attribution.occlusion import Occlusion
from ecgray.attribution.smoothgrad import SmoothGrad
from ecgray.attribution.guided_backprop import GuidedBackprop
from ecgray.attribution.grad_cam import GradCAM, GuidedGradCAM
from ecgray.attribution.kernel_shap import KernelShap

__all__ = [
    "attribute",
    "Attribution",
    "METHODS",
    "available_methods",
    "AttributionMethod",
    "register_method",
    "resolve_method",
    "IntegratedGradients",
    "Saliency",
    "InputXGradient",
    "DeepLift",
    "GradientShap",
    "Occlusion",
    "SmoothGrad",
    "GuidedBackprop",
    "GradCAM",
    "GuidedGradCAM",
    "KernelShap",
]
