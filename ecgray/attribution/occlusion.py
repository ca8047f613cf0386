"""Occlusion: the drop of the target output when a sliding 1-D window is replaced by a fill value."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ecgray.attribution.base import AttributionMethod, register_method


def inner_model(forward: nn.Module) -> nn.Module:
    """The user's model behind ``forward``: ``forward`` itself, or the model inside the
    ``output="probability"`` wrapper (:class:`ecgray.attribution.core._SigmoidOutput`)."""
    from ecgray.attribution.core import _SigmoidOutput

    return forward.model if isinstance(forward, _SigmoidOutput) else forward


def model_fs(forward: nn.Module) -> float:
    """Sampling rate (Hz) of the model behind ``forward`` (the model, or the ``output="probability"``
    wrapper around it): its spec's ``fs`` (:func:`ecgray.models.spec.spec_of`; a ``ResNet1d``
    without a spec: Ribeiro's 400 Hz). ``ValueError`` for a model without a spec."""
    from ecgray.models.spec import spec_of

    model = inner_model(forward)
    try:
        return float(spec_of(model).fs)
    except Exception as e:  # noqa: BLE001 - a model without a spec
        raise ValueError(f"occlusion sizes its windows in ms and needs the model's sampling rate: {e}") from None


def windows(length: int, window: int, stride: int) -> list[int]:
    """Start samples of the windows ``[s, s + window)`` over ``length`` samples: every ``stride``
    samples while the window fits, plus one window ending at the last sample if the stride
    leaves a tail uncovered (so every sample is occluded at least once)."""
    window = min(window, length)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@register_method
class Occlusion(AttributionMethod):
    r"""Occlusion (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901), as Captum's
    ``Occlusion`` with 1-D sliding windows. For every *cell* ``w`` -- one lead x one
    time window (``per_lead=True``), or all leads x one time window -- the input with
    the cell replaced by ``fill`` gives::

        d_w = f(x) - f(x with cell w := fill)
        R_i = mean_{w covering i} d_w              (Captum's semantics)
        R_i = mean_{w covering i} d_w / |w|        (normalize_window=True)

    ``|w|`` = samples in the cell (window x occluded leads). With the default stride
    (= window) each sample lies in one cell, so ``R`` is ``d_w`` on the whole cell
    (Captum), or ``d_w`` spread uniformly over its samples (``normalize_window``: then
    ``sum(R)`` over a cell is ``d_w``). Windows start every ``stride`` samples while
    they fit; if the stride leaves a tail, one more window ends at the last sample
    (Captum leaves such a tail unoccluded, with relevance 0/0). A window longer than the
    record is cut to it.

    Window and stride are in ms, converted at the model's sampling rate (its spec's
    ``fs``; Ribeiro's network: 400 Hz, so 40 ms = 16 samples):
    ``round(ms * fs / 1000)``, at least 1 sample. Cost: one forward per cell --
    ``leads x L / stride`` per record (3,072 for 12 x 4,096 at 40 ms) -- done without
    gradients in batches of ``internal_batch_size`` occluded copies; all targets come
    from the same forwards (fast path). The rows path computes the same forwards once
    per record of the chunk. No delta.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: unused (deterministic method).
        window_ms: window length in ms (40).
        stride_ms: step between window starts in ms; ``None`` = ``window_ms``.
        per_lead: occlude one lead x window at a time (True) or all leads at once.
        fill: the value the occluded samples get (0.0, input units).
        normalize_window: divide each cell's difference by its number of samples (False).
        internal_batch_size: occluded copies per forward (64).
    """

    name = "occlusion"
    aliases = ()
    default_batch_size = 8
    shared_targets = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        window_ms: float = 40.0,
        stride_ms: float | None = None,
        per_lead: bool = True,
        fill: float = 0.0,
        normalize_window: bool = False,
        internal_batch_size: int = 64,
    ) -> None:
        super().__init__(
            forward,
            params,
            seed=seed,
            window_ms=window_ms,
            stride_ms=stride_ms,
            per_lead=per_lead,
            fill=fill,
            normalize_window=normalize_window,
            internal_batch_size=internal_batch_size,
        )
        self.fs = model_fs(forward)
        p = self.params
        self.window = max(1, int(round(float(p["window_ms"]) * self.fs / 1000.0)))
        stride_ms = p["window_ms"] if p["stride_ms"] is None else p["stride_ms"]
        self.stride = max(1, int(round(float(stride_ms) * self.fs / 1000.0)))

    @classmethod
    def check_params(cls, params):
        p = dict(params)
        if not float(p["window_ms"]) > 0:
            raise ValueError("window_ms must be > 0")
        if p["stride_ms"] is not None and not float(p["stride_ms"]) > 0:
            raise ValueError("stride_ms must be > 0")
        if int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")
        p["fill"] = float(p["fill"])
        p["per_lead"] = bool(p["per_lead"])
        p["normalize_window"] = bool(p["normalize_window"])
        return p

    def provenance(self):
        out = super().provenance()
        out["fs"] = self.fs
        out["window_samples"] = self.window
        out["stride_samples"] = self.stride
        return out

    def _cells(self, leads: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(lead or -1 for all leads, start) per cell, and the window length in samples."""
        w = min(self.window, length)
        starts = torch.as_tensor(windows(length, w, self.stride), dtype=torch.long, device=device)
        if self.params["per_lead"]:
            lead = torch.arange(leads, device=device).repeat_interleave(len(starts))
            start = starts.repeat(leads)
        else:
            lead = torch.full((len(starts),), -1, dtype=torch.long, device=device)
            start = starts
        return lead, start, w

    def _masks(self, lead: torch.Tensor, start: torch.Tensor, w: int, leads: int, length: int) -> torch.Tensor:
        t = torch.arange(length, device=start.device)
        tmask = (t >= start[:, None]) & (t < start[:, None] + w)  # (b, L)
        lmask = (lead[:, None] < 0) | (lead[:, None] == torch.arange(leads, device=lead.device))  # (b, leads)
        return lmask[:, :, None] & tmask[:, None, :]

    def occlude(self, xrec: torch.Tensor, targets: list[int]) -> torch.Tensor:
        """Relevance ``(T, leads, L)`` of one record ``(leads, L)`` for the class indices ``targets``."""
        leads, length = xrec.shape
        lead, start, w = self._cells(leads, length, xrec.device)
        tt = torch.as_tensor(targets, dtype=torch.long, device=xrec.device)
        total = torch.zeros((len(targets), leads, length), dtype=torch.float64, device=xrec.device)
        count = torch.zeros((leads, length), dtype=torch.float64, device=xrec.device)
        fill = torch.tensor(self.params["fill"], dtype=xrec.dtype, device=xrec.device)
        ibs = int(self.params["internal_batch_size"])
        with torch.no_grad():
            f0 = self.forward(xrec[None])[0, tt]
            for s in range(0, len(start), ibs):
                mask = self._masks(lead[s:s + ibs], start[s:s + ibs], w, leads, length)
                copies = torch.where(mask, fill, xrec[None])
                diff = (f0[None] - self.forward(copies)[:, tt]).to(torch.float64)  # (b, T)
                m = mask.to(torch.float64)
                if self.params["normalize_window"]:
                    diff = diff / m.sum(dim=(1, 2))[:, None]
                total += torch.einsum("bt,bcl->tcl", diff, m)
                count += m.sum(dim=0)
        return (total / count).to(xrec.dtype)

    def attribute_records(self, x, targets, record):
        return torch.stack([self.occlude(x[r], list(targets)) for r in range(x.shape[0])]), None

    def attribute_rows(self, x, target, record):
        rel = torch.empty_like(x)
        for rec in torch.unique(record).tolist():
            rows = (record == rec).nonzero()[:, 0]
            ts = target[rows.to(target.device)].tolist()
            rel[rows.to(rel.device)] = self.occlude(x[int(rows[0])], ts)
        return rel, None


__all__ = ["Occlusion"]
