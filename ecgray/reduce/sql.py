"""The ``lead_relevance`` query in DuckDB SQL over the committed files (:func:`duckdb_lead_relevance_sql`)."""
from __future__ import annotations

import polars as pl

from ecgray.io.fs import storage_options
from ecgray.schemas.tables import record_classes

from .common import UNLABELLED_GROUPS, committed_files
from .stats import Z95


def _sql_list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def duckdb_lead_relevance_sql(output: str, *, threshold: float = 0.5) -> str:
    """DuckDB SQL computing ``lead_relevance`` (without the schema cast) from the committed files;
    ``threshold`` splits the unlabelled records as in :func:`reduce`.

    Reads the same Parquet files as :func:`reduce` (``read_parquet([...],
    hive_partitioning=true)``); for ``s3://`` outputs DuckDB needs ``httpfs``
    and an S3 secret configured by the caller.
    """
    summ = committed_files(output, "relevance_summary")
    recs = committed_files(output, "records")
    if not summ:
        raise FileNotFoundError(f"{output}: no committed relevance_summary shards")
    src_s = f"read_parquet({_sql_list(summ)}, hive_partitioning=true)"
    classes = record_classes(pl.scan_parquet(recs[0], storage_options=storage_options(output))
                             .collect_schema().names()) if recs else ()
    if classes:
        src_r = f"read_parquet({_sql_list(recs)}, hive_partitioning=true, union_by_name=true)"
        rec = "\n    UNION ALL ".join(
            f"SELECT record_key, \"window\", '{c}' AS target, CASE WHEN label_scheme = 'none' THEN NULL "
            f"ELSE \"label_{c}\" END AS label, CASE WHEN label_scheme = 'none' THEN NULL ELSE label_normal END "
            "AS label_normal, "
            f"CAST(\"prob_{c}\" AS DOUBLE) AS prob, true AS present FROM {src_r}"
            for c in classes)
    else:
        rec = "SELECT NULL::VARCHAR AS record_key, NULL::INTEGER AS \"window\", NULL::VARCHAR AS target, " \
              "NULL::BOOLEAN AS label, NULL::BOOLEAN AS label_normal, NULL::DOUBLE AS prob, " \
              "NULL::BOOLEAN AS present WHERE false"
    thr = repr(float(threshold))
    pos, neg = UNLABELLED_GROUPS
    return f"""
WITH rec AS (
    {rec}
),
j AS (
    SELECT s.method, s.target, s.lead, CAST(s."sum" AS DOUBLE) AS rel,
           CASE WHEN r.present IS NULL THEN 'other'
                WHEN r.label IS NULL THEN CASE WHEN r.prob >= {thr} THEN '{pos}' ELSE '{neg}' END
                WHEN r.label THEN 'positive' WHEN r.label_normal THEN 'normal' ELSE 'other' END AS grp,
           CASE WHEN sum(CAST(s.abs_sum AS DOUBLE)) OVER w > 0
                THEN CAST(s.abs_sum AS DOUBLE) / sum(CAST(s.abs_sum AS DOUBLE)) OVER w END AS share
    FROM {src_s} AS s
    LEFT JOIN rec AS r ON r.record_key = s.record_key AND r."window" = s."window" AND r.target = s.target
    WINDOW w AS (PARTITION BY s.record_key, s."window", s.method, s.target)
),
g AS (
    SELECT method, target, grp, lead, count(rel) AS n, avg(rel) AS mean_relevance,
           stddev_samp(rel) AS sd_relevance, avg(share) AS share_abs
    FROM j GROUP BY method, target, grp, lead
)
SELECT method, target, grp AS "group", lead, n, mean_relevance, sd_relevance,
       mean_relevance - {Z95!r} * sd_relevance / sqrt(n) AS ci_low,
       mean_relevance + {Z95!r} * sd_relevance / sqrt(n) AS ci_high,
       share_abs,
       rank() OVER (PARTITION BY method, target, grp ORDER BY mean_relevance DESC) AS "rank"
FROM g
ORDER BY method, target, "group", lead
"""

