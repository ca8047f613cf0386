"""Compatibility module: the names that lived here before the methods got a module each.

``from ecgray.attribution.methods import IntegratedGradients`` (or any other name
below) keeps working; new code imports from :mod:`ecgray.attribution` or from the
modules themselves:

* :mod:`ecgray.attribution.base` -- :class:`AttributionMethod`, the registry, shared helpers;
* :mod:`ecgray.attribution.integrated_gradients`, :mod:`~ecgray.attribution.saliency`,
  :mod:`~ecgray.attribution.input_x_gradient`, :mod:`~ecgray.attribution.deeplift`,
  :mod:`~ecgray.attribution.gradient_shap` -- one method each;
* :mod:`ecgray.attribution.lrp` -- the LRP methods.
"""
from __future__ import annotations

from ecgray.attribution.base import (  # noqa: F401  (re-exported)
    METHODS,
    AttributionMethod,
    _as_tensor,
    _check_baseline_param,
    _describe_array,
    _jsonable,
    _Quiet,
    _row_baseline,
    available_methods,
    register_method,
    resolve_method,
)
from ecgray.attribution.deeplift import DeepLift, _deeplift_canonical, _deeplift_maxpool_forward  # noqa: F401
from ecgray.attribution.gradient_shap import GradientShap, _grad_of_target, _record_seed  # noqa: F401
from ecgray.attribution.input_x_gradient import InputXGradient
from ecgray.attribution.integrated_gradients import IntegratedGradients
from ecgray.attribution.saliency import Saliency

__all__ = [
    "AttributionMethod",
    "METHODS",
    "register_method",
    "resolve_method",
    "available_methods",
    "IntegratedGradients",
    "Saliency",
    "InputXGradient",
    "DeepLift",
    "GradientShap",
]
