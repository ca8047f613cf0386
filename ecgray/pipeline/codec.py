"""Shard payloads between pipeline stages as data, never as code (no pickle).

A payload is a tree of ``None``/bool/int/float/str, lists/tuples, dicts with
string keys, :class:`numpy.ndarray` (any non-object dtype), bytes,
:class:`types.SimpleNamespace` and :class:`ecgray.attribution.Attribution`.
:func:`dumps` writes it as::

    MAGIC | u32 json length | u32 n blobs | n x u64 blob length | JSON | blobs

where the JSON holds the tree with arrays and bytes replaced by references to
blobs; arrays are ``.npy`` bytes (:func:`numpy.save`) read back with
``numpy.load(..., allow_pickle=False)``. Decoding builds only the types listed
above, so a payload cannot make a process run code. Tuples come back as lists.

Like pickle, a namespace that appears several times (one record's metadata
shared by its windows) is written once and comes back as one object, and an
array that is one value broadcast to a shape (``np.broadcast_to``) is written
as that value and its shape.
"""
from __future__ import annotations

import dataclasses
import io
import json
import struct
from types import SimpleNamespace

import numpy as np

MAGIC = b"ECGRAY-PAYLOAD-1\n"
TAG = "__ecgray__"


class CodecError(ValueError):
    """A value that cannot be encoded, or bytes that are not a payload."""


def _attribution_cls():
    from ecgray.attribution.core import Attribution

    return Attribution


class _Encoder:
    """State of one :func:`dumps`. A class, not a recursive closure: a closure that calls itself is a
    reference cycle, and the cycle would keep every blob of the payload alive until the cyclic garbage
    collector happens to run (memory grew by ~2 MB per shard in long runs)."""

    def __init__(self):
        self.blobs: list[bytes] = []
        self.seen: dict[int, int] = {}  # id(namespace) -> index, to write shared objects once
        self.keep: list = []  # the encoded namespaces, alive while encoding so their ids stay unique

    def blob(self, data: bytes) -> int:
        self.blobs.append(data)
        return len(self.blobs) - 1

    def enc(self, o):
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            if o.dtype.hasobject:
                raise CodecError(f"cannot encode an object array (dtype {o.dtype})")
            if o.size > 1 and not any(o.strides):
                return {TAG: "broadcast", "value": self.enc(np.array(o.flat[0], dtype=o.dtype)),
                        "shape": list(o.shape)}
            buf = io.BytesIO()
            np.save(buf, o, allow_pickle=False)
            return {TAG: "ndarray", "i": self.blob(buf.getvalue())}
        if isinstance(o, (bytes, bytearray, memoryview)):
            return {TAG: "bytes", "i": self.blob(bytes(o))}
        if isinstance(o, (list, tuple)):
            return [self.enc(v) for v in o]
        if isinstance(o, dict):
            if not all(isinstance(k, str) for k in o):
                raise CodecError(f"dict keys must be strings, got {[type(k).__name__ for k in o]}")
            if TAG in o:
                return {TAG: "dict", "items": [[k, self.enc(v)] for k, v in o.items()]}
            return {k: self.enc(v) for k, v in o.items()}
        if isinstance(o, SimpleNamespace):
            if id(o) in self.seen:
                return {TAG: "ref", "n": self.seen[id(o)]}
            self.seen[id(o)] = len(self.seen)
            self.keep.append(o)
            return {TAG: "namespace", "n": self.seen[id(o)], "v": self.enc(vars(o))}
        if dataclasses.is_dataclass(o) and type(o).__name__ == "Attribution" and isinstance(o, _attribution_cls()):
            return {TAG: "attribution",
                    "v": self.enc({f.name: getattr(o, f.name) for f in dataclasses.fields(o)})}
        raise CodecError(f"cannot encode a {type(o).__module__}.{type(o).__name__}")


def dumps(obj) -> bytes:
    """Encode ``obj`` (see the module docstring) as bytes."""
    e = _Encoder()
    meta = json.dumps(e.enc(obj), separators=(",", ":")).encode()
    head = struct.pack("<II", len(meta), len(e.blobs)) + b"".join(struct.pack("<Q", len(b)) for b in e.blobs)
    return b"".join([MAGIC, head, meta, *e.blobs])


class _Decoder:
    """State of one :func:`loads` (a class for the same reason as :class:`_Encoder`)."""

    def __init__(self, blobs: list):
        self.blobs = blobs
        self.objects: list = []

    def dec(self, o):
        if isinstance(o, list):
            return [self.dec(v) for v in o]
        if not isinstance(o, dict):
            return o
        tag = o.get(TAG)
        if tag is None:
            return {k: self.dec(v) for k, v in o.items()}
        if tag == "ndarray":
            return np.load(io.BytesIO(self.blobs[o["i"]]), allow_pickle=False)
        if tag == "bytes":
            return bytes(self.blobs[o["i"]])
        if tag == "broadcast":
            return np.broadcast_to(self.dec(o["value"]), tuple(o["shape"]))
        if tag == "dict":
            return {k: self.dec(v) for k, v in o["items"]}
        if tag == "namespace":
            ns = SimpleNamespace()
            self.objects.append(ns)
            ns.__dict__.update(self.dec(o["v"]))
            return ns
        if tag == "ref":
            return self.objects[o["n"]]
        if tag == "attribution":
            fields = self.dec(o["v"])
            fields["targets"] = tuple(fields["targets"])
            return _attribution_cls()(**fields)
        raise CodecError(f"unknown tag {tag!r}")


def loads(data: bytes):
    """Decode bytes written by :func:`dumps`."""
    view = memoryview(data)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise CodecError("not an ecgray payload (bad magic)")
    pos = len(MAGIC)
    n_meta, n_blobs = struct.unpack_from("<II", view, pos)
    pos += 8
    sizes = struct.unpack_from(f"<{n_blobs}Q", view, pos)
    pos += 8 * n_blobs
    meta = json.loads(bytes(view[pos:pos + n_meta]))
    pos += n_meta
    blobs = []
    for size in sizes:
        blobs.append(view[pos:pos + size])
        pos += size
    if pos != len(view):
        raise CodecError(f"payload has {len(view) - pos} trailing bytes")
    try:
        return _Decoder(blobs).dec(meta)
    finally:
        for b in blobs:
            b.release()
        view.release()
