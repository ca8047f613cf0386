"""Attributions for the ECG classifier: Captum gradient methods and Zennit LRP.

>>> from ecgray.attribution import attribute, Attribution, METHODS, available_methods
>>> res = attribute(model, x, targets=["AF"], method="ig", n_steps=32)

* :mod:`ecgray.attribution.core` -- :func:`attribute` and :class:`Attribution`;
* :mod:`ecgray.attribution.methods` -- the method registry (Captum methods);
* :mod:`ecgray.attribution.lrp` -- LRP rules, canonizers for ``ResNet1d``;
* :mod:`ecgray.attribution._zennit` -- importing zennit without torchvision.

Neither Captum nor Zennit is imported here; they load when a method runs.
"""
from ecgray.attribution.core import Attribution, attribute
from ecgray.attribution.methods import METHODS, AttributionMethod, available_methods, register_method, resolve_method
from ecgray.attribution import lrp as _lrp  # noqa: F401  (registers lrp_epsilon, lrp_alpha_beta)

__all__ = [
    "attribute",
    "Attribution",
    "METHODS",
    "available_methods",
    "AttributionMethod",
    "register_method",
    "resolve_method",
]
