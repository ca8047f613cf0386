"""Tables of ``ecgray evaluate`` (under ``<output>/evaluation/``), registered in :data:`TABLES`.

Each table keys its rows by the run's ``(record_key, window)`` and names the method and target; every
setting that changes a number (replacement, block size, seed ...) is in ``evaluation/_manifest.json``
and, where rows of several settings could meet, in the row (``replacement``, ``block_ms``).
"""
from __future__ import annotations

import pyarrow as pa

from .tables import TABLES, _key

_eval = [pa.field("evaluation_id", pa.string(), nullable=False)] + _key
_mt = [pa.field("method", pa.string(), nullable=False), pa.field("target", pa.string(), nullable=False)]
_f64 = pa.float64()

EVALUATION_TABLES: dict[str, pa.Schema] = {
    # One row per record x method x target x order x step of a deletion curve.
    "deletion": pa.schema(_eval + _mt + [
        pa.field("replacement", pa.string(), nullable=False),  # zero | linear | noisy_linear
        pa.field("segments", pa.string(), nullable=False),  # blocks | waves | blocks (no beats): a waves run's fallback
        pa.field("block_ms", pa.float32()),  # blocks: their length; waves: null
        pa.field("order", pa.string(), nullable=False),  # morf | lerf | random
        pa.field("step", pa.int32(), nullable=False),
        pa.field("fraction", pa.float32(), nullable=False),  # share of the record's segments removed
        pa.field("logit", pa.float32()),
        pa.field("probability", pa.float32()),
    ]),
    # One row per record x method x target: the curves' areas and the faithfulness correlation.
    "faithfulness": pa.schema(_eval + _mt + [
        pa.field("replacement", pa.string(), nullable=False),
        pa.field("segments", pa.string(), nullable=False),
        pa.field("block_ms", pa.float32()),
        pa.field("n_segments", pa.int32(), nullable=False),
        pa.field("label", pa.bool_()),  # label_<target> of the run's records table; null when unknown
        pa.field("probability", pa.float32()),
        pa.field("logit", pa.float32()),
        pa.field("auc_morf", _f64), pa.field("auc_lerf", _f64), pa.field("auc_random", _f64),
        pa.field("random_minus_morf", _f64),  # > 0: MoRF deletion drops the logit faster than random
        pa.field("lerf_minus_morf", _f64),
        pa.field("faithfulness_correlation", _f64),
    ]),
    # One row per record x method x target x test step: similarity of the perturbed map to the original.
    "randomisation": pa.schema(_eval + _mt + [
        pa.field("test", pa.string(), nullable=False),  # cascading | random_logit
        pa.field("step", pa.int32(), nullable=False),  # cascading: units randomised - 1; random_logit: 0
        pa.field("layer", pa.string()),  # cascading: the unit randomised last; random_logit: null
        pa.field("other_target", pa.string()),  # random_logit: the class drawn; cascading: null
        pa.field("spearman_abs", _f64), pa.field("spearman_signed", _f64), pa.field("topk_overlap", _f64),
    ]),
    # One row per record x target x pair: agreement of two maps (two methods of one model, or one
    # method of two models).
    "agreement": pa.schema(_eval + [
        pa.field("target", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # methods | models
        pa.field("method", pa.string()),  # kind=models: the method; kind=methods: null
        pa.field("model", pa.string()),  # kind=methods: the model; kind=models: null
        pa.field("a", pa.string(), nullable=False),
        pa.field("b", pa.string(), nullable=False),
        pa.field("spearman_abs", _f64), pa.field("spearman_signed", _f64), pa.field("topk_overlap", _f64),
    ]),
}
EVALUATION_TABLE_NAMES = tuple(EVALUATION_TABLES) + ("errors",)
TABLES.update(EVALUATION_TABLES)

# --------------------------------------------------------------------------------------------
# Data-set-level tables of an evaluation (``ecgray.evaluate.summary``: ``<output>/reduced/<name>.parquet``).
_ci = [pa.field("ci_low", _f64), pa.field("ci_high", _f64)]
_sim = [pa.field("spearman_abs", _f64), pa.field("spearman_abs_ci_low", _f64),
        pa.field("spearman_abs_ci_high", _f64), pa.field("spearman_signed", _f64), pa.field("topk_overlap", _f64)]
EVALUATION_SUMMARY_TABLES: dict[str, pa.Schema] = {
    # per method x target x replacement: the mean curve-area differences with 95 % CIs (normal approximation)
    "evaluation_faithfulness": pa.schema(_mt + [
        pa.field("replacement", pa.string(), nullable=False), pa.field("segments", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("random_minus_morf", _f64), *_ci,
        pa.field("frac_morf_faster", _f64),  # share of record windows with random_minus_morf > 0
        pa.field("lerf_minus_morf", _f64),
        pa.field("faithfulness_correlation", _f64), pa.field("fc_ci_low", _f64), pa.field("fc_ci_high", _f64),
    ]),
    # per method x target x replacement x order x step: the mean deletion curve
    "evaluation_deletion": pa.schema(_mt + [
        pa.field("replacement", pa.string(), nullable=False), pa.field("segments", pa.string(), nullable=False),
        pa.field("order", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False), pa.field("fraction", pa.float32(), nullable=False),
        pa.field("n", pa.int64(), nullable=False), pa.field("logit", _f64), *_ci,
        pa.field("logit_drop", _f64),  # mean of (logit at step 0 - logit at this step)
    ]),
    # per method x target x test x step: mean similarity to the original map
    "evaluation_randomisation": pa.schema(_mt + [
        pa.field("test", pa.string(), nullable=False), pa.field("step", pa.int32(), nullable=False),
        pa.field("layer", pa.string()), pa.field("n", pa.int64(), nullable=False), *_sim,
    ]),
    # per kind x (model | method) x pair: mean agreement over record windows and targets
    "evaluation_agreement": pa.schema([
        pa.field("kind", pa.string(), nullable=False), pa.field("method", pa.string()),
        pa.field("model", pa.string()), pa.field("a", pa.string(), nullable=False),
        pa.field("b", pa.string(), nullable=False), pa.field("n", pa.int64(), nullable=False), *_sim,
    ]),
    # per method x target: the one-line verdict and the numbers behind it
    "evaluation_verdicts": pa.schema(_mt + [
        pa.field("faithful", pa.string()),  # yes | no | undecided | too few records | not measured
        pa.field("randomisation", pa.string()),  # passes | sign only | fails | not measured
        pa.field("class_sensitive", pa.string()),  # passes | fails | not measured (random logit)
        pa.field("trust", pa.string(), nullable=False),  # yes | partly | no | too few records | not measured
        pa.field("verdict", pa.string(), nullable=False),
    ]),
}
EVALUATION_SUMMARY_NAMES = tuple(EVALUATION_SUMMARY_TABLES)
TABLES.update(EVALUATION_SUMMARY_TABLES)

# --------------------------------------------------------------------------------------------
# The ground-truth check of a model on held-out synthetic records (ecgray.groundtruth.report_table), one row
# per method x class; ``<output>/reduced/ground_truth.parquet`` when written there (``ecgray check
# --into OUTPUT``, ``ecgray demo``), shown by the report's trust section.
GROUND_TRUTH = "ground_truth"
TABLES[GROUND_TRUTH] = pa.schema(_mt + [
    pa.field("seed", pa.int64(), nullable=False),  # of the held-out synthetic records
    pa.field("n_records", pa.int64(), nullable=False),  # correctly classified records of the class
    pa.field("density_ratio", _f64), pa.field("signed_share", _f64), pa.field("frac_cells_in", _f64),
    pa.field("rma", _f64), pa.field("rra", _f64), pa.field("auc_pr", _f64),
    pa.field("feature_frac_drop", _f64),  # share of records whose logit drops when the feature is removed
    pa.field("feature_median_drop", _f64),
    pa.field("control_median_drop", _f64),  # the same energy removed elsewhere (smoothed noise)
])
