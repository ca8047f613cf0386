"""Data-set scale explanations with Ray Data: ``run`` writes sharded, committed Parquet tables.

>>> from ecgray.pipeline import run, read_table
>>> s = run("s3://bucket/cpsc/", "s3://bucket/out/", model="demo", methods=["saliency"], targets=["AF"])
>>> read_table("s3://bucket/out/", "relevance_summary")

* one Ray Data row = one shard (``shard_size`` consecutive records in
  record_id order): read/preprocess (tasks) -> attribution (actor pool, model
  loaded once per actor) -> beats + Arrow tables (tasks) -> write (tasks);
* every shard writes ``<output>/<table>/shard=<k>/part-0.parquet`` (hive layout,
  plain scalar/list columns: Polars and DuckDB read it directly) and then its
  commit marker ``<output>/_commits/shard=<k>.json``; :func:`read_table` reads
  committed shards only;
* ``resume=True`` skips committed shards (refusing when the input or the
  settings changed); retries (tasks, actor restarts) rewrite the same files,
  so no row is lost or duplicated.
"""
from .run import RunSummary, plan_shards, print_summary, run
from .store import PipelineError, Store, committed_shards, read_table

__all__ = ["run", "RunSummary", "print_summary", "plan_shards", "read_table", "committed_shards", "PipelineError",
           "Store"]
