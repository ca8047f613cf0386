"""Typed errors. Every error names the record and a stable ``error_type``.

A run never crashes on bad input: stages raise these, the caller turns them
into one row of the ``errors`` table (``record_id, stage, error_type,
message``) and goes on with the other records.
"""
from __future__ import annotations

import os

# Environment variables whose values must never reach a message, a log line or an output table.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


def redact(text: str) -> str:
    """``text`` with the values of the credential variables in :data:`SECRET_ENV` replaced by ``***``.

    Error messages can quote what a storage service sent back; this keeps the
    credentials of the process out of the ``errors`` table and the logs even
    when a service echoes them. Values shorter than 8 characters are left
    alone (they are not real credentials, and replacing them would mangle text).
    """
    text = str(text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8 and value in text:
            text = text.replace(value, "***")
    return text


class ECGError(Exception):
    """Base class: a problem with one record.

    ``error_type`` is a stable, machine-readable code (snake_case) that tests and
    the errors table rely on; ``stage`` is where it happened (``read``,
    ``preprocess``, ``attribute``, ``beats``, ``write``).
    """

    stage = "read"
    error_type = "ecg_error"

    def __init__(self, record_id: str | None, reason: str, *, error_type: str | None = None, stage: str | None = None):
        self.record_id = record_id or "<unknown>"
        self.reason = redact(reason)
        if error_type:
            self.error_type = error_type
        if stage:
            self.stage = stage
        super().__init__(f"{self.record_id}: {self.reason}")

    def as_row(self) -> dict:
        """One row of the ``errors`` table."""
        return {
            "record_id": self.record_id,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": str(self),
        }


class ReadError(ECGError):
    """The record cannot be read: missing/garbled header, truncated data, unknown format."""

    stage = "read"
    error_type = "read_error"


class LabelError(ECGError):
    """Labels cannot be parsed."""

    stage = "read"
    error_type = "label_error"


class LeadError(ECGError):
    """Missing, unknown, duplicate or extra leads."""

    stage = "preprocess"
    error_type = "lead_error"


class SignalError(ECGError):
    """Bad samples: NaN/inf, flat, saturated or implausible amplitudes, bad sampling rate, too short."""

    stage = "preprocess"
    error_type = "signal_error"


class ModelError(Exception):
    """A model file or name cannot be loaded (not a per-record error)."""
