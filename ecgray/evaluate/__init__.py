"""``ecgray evaluate``: which maps of a run can be trusted, for which class -- numbers per record, at scale.

>>> from ecgray.evaluate import evaluate, read_evaluation
>>> summary = evaluate("out/", sample=20, replacement="noisy_linear")
>>> read_evaluation("out/", "faithfulness")          # one row per record x method x target

Modules (plain NumPy/torch in, Arrow out; Ray only in :mod:`.run`):

* :mod:`.perturb` -- blocks of ``block_ms`` x lead, replacements (zero, linear, ROAD's noisy linear);
* :mod:`.faithfulness` -- deletion curves MoRF / LeRF / random, their areas, faithfulness correlation;
* :mod:`.randomisation` -- cascading model-parameter randomisation, random-logit test;
* :mod:`.similarity` -- Spearman of signed and absolute maps, top-k overlap;
* :mod:`.sample` -- ``--sample N``: seeded, class-stratified subsets;
* :mod:`.core` -- :class:`EvaluateConfig`, :func:`evaluate_batch` (one batch of records);
* :mod:`.run` -- the driver: shards, Ray tasks, the commit protocol, ``--resume``;
* :mod:`.summary` -- the data-set-level tables (``<output>/reduced/evaluation_*.parquet``) and verdicts.

Tables: :mod:`ecgray.schemas.evaluation`.
"""
import importlib

from ecgray.store import evaluation_root

#: public names -> their module (loaded on first use: ``ecgray.evaluate.summary``, which the reduce and the
#: report import, needs neither torch nor Ray)
_LAZY = {"evaluate": "run", "read_evaluation": "run", "EvaluateSummary": "run", "EvaluateConfig": "core",
         "evaluate_batch": "core", "TESTS": "core"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"ecgray.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ecgray.evaluate' has no attribute {name!r}")


__all__ = ["evaluate", "read_evaluation", "evaluation_root", "EvaluateConfig", "EvaluateSummary", "evaluate_batch",
           "TESTS"]
