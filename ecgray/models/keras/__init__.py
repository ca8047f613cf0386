"""Load Keras HDF5 weights of the Ribeiro et al. 2020 network into :class:`ResNet1d`.

Only :mod:`h5py` is used: neither TensorFlow nor Keras is imported, and nothing
in the file is ever executed (``model_config`` is parsed as JSON data). Never
pickle.

One file goes through three steps:

1. :mod:`~ecgray.models.keras.layouts` -- which of the four HDF5 layouts the
   file has (``keras2``: Keras 2 ``model.save``, e.g. the official
   ``model.hdf5``; ``keras3-legacy-h5``: Keras 3 ``model.save("m.h5")``;
   ``keras2-weights`` / ``keras3-weights``: ``save_weights`` without a
   ``model_config``), and the weights of each layer in it.
2. One of two mapping strategies onto the torch modules, each deriving the
   :class:`ResNetConfig` from the file:

   * with a ``model_config``: **by topology, not by layer names** --
     :mod:`~ecgray.models.keras.graph` walks the layer graph back from the
     output, :mod:`~ecgray.models.keras.topology` checks each layer's config
     and maps its weights;
   * weights-only files: **by shapes and layer order** --
     :mod:`~ecgray.models.keras.shapes` (which also holds the architecture
     checks: ``config=`` against the file, and :func:`check_published`, the
     test for the published network that the ``ribeiro2020`` registry entry
     uses).

   Both convert the arrays with :mod:`~ecgray.models.keras.convert`.
3. :mod:`~ecgray.models.keras.loader` -- fills a float32 :class:`ResNet1d`,
   returned in eval mode with frozen parameters (``.keras_info``: versions,
   layout, mapping).
"""
from __future__ import annotations

from ecgray.models.keras.loader import load_keras_hdf5, read_keras_hdf5
from ecgray.models.keras.shapes import check_published, published_differences

__all__ = ["check_published", "load_keras_hdf5", "published_differences", "read_keras_hdf5"]
