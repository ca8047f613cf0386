"""The :class:`Record` container: one ECG record as read. Reading is :func:`ecgray.io.read.read_record`."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ecgray.io.labels import Labels


@dataclass
class Record:
    """One ECG record as read from disk/S3.

    ``signal`` is float32, shape ``(n_samples, n_leads)``, in mV; ``leads``
    are the lead names as written in the file (CODE-15: the model names
    ``DI`` .. ``V6``); ``format`` is ``"wfdb"`` or ``"code15"``.
    """

    record_id: str
    uri: str
    format: str
    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    labels: Labels = field(default_factory=Labels)
    dataset: str = ""
    meta: dict = field(default_factory=dict)
    #: unique key within the input (``ecgray.io.catalog.record_key``); "" = not set (tables use the URI)
    record_key: str = ""
    #: flags set by the reader (e.g. ``multi_frequency``); preprocessing adds them to the window's flags
    flags: tuple[str, ...] = ()
    #: channels that are not usable as a lead in mV, ``{channel index: (error_type, reason)}`` -- e.g.
    #: ``bad_units`` (a RESP channel in ``NU``), ``bad_gain`` (ADC gain 0). The reader keeps them (so a
    #: record whose *unneeded* channel is bad is still processed, flag ``extra_leads_dropped``);
    #: preprocessing raises the error when the model needs that channel.
    bad_channels: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_leads(self) -> int:
        return int(self.signal.shape[1])

    def __repr__(self) -> str:
        return (f"Record({self.record_id!r}, format={self.format!r}, dataset={self.dataset!r}, "
                f"signal={self.signal.shape} {self.signal.dtype}, fs={self.fs}, leads={self.leads}, "
                f"labels={self.labels.positives() or (('normal',) if self.labels.normal else ())})")
