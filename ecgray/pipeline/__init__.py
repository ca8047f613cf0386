"""Data-set scale explanations with Ray Data: ``run`` writes sharded, committed Parquet tables.

>>> from ecgray.pipeline import run, read_table
>>> s = run("s3://bucket/cpsc/", "s3://bucket/out/", model="demo", methods=["saliency"], targets=["AF"])
>>> read_table("s3://bucket/out/", "relevance_summary")

* one Ray Data row = one shard (``shard_size`` records in record_id order;
  ``record_key``, the path relative to the input, identifies a record): read/preprocess (tasks) -> attribution (actor pool, model
  loaded once per actor) -> beats + Arrow tables (tasks) -> write (tasks);
* every shard writes ``<output>/<table>/shard=<k>/part-0.parquet`` (hive layout,
  plain scalar/list columns: Polars and DuckDB read it directly) and then its
  commit marker ``<output>/_commits/shard=<k>.json``; :func:`read_table` reads
  committed shards only;
* ``resume=True`` skips committed shards and plans records that no shard holds
  (an input that grew) into new shards; it refuses when the settings changed or a
  committed record was removed or changed; retries (tasks, actor restarts)
  rewrite the same files, so no row is lost or duplicated;
* a run holds ``<output>/_lock.json``: a second run into the same output is
  refused while the first lives; a dead run's lock is taken over.
"""
from ecgray.store import PipelineError, Store, committed_shards, read_table

from .config import RunConfig
from .plan import plan_shards
from .run import run
from .summary import RunSummary, print_summary

__all__ = ["run", "RunConfig", "RunSummary", "print_summary", "plan_shards", "read_table", "committed_shards",
           "PipelineError", "Store"]
