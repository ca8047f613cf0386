"""The end-of-run summary of a pipeline run: :class:`RunSummary` and how the console shows it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RunSummary:
    run_id: str
    output: str
    records: int = 0  # records in the input (catalog rows)
    records_ok: int = 0  # records explained (in `records`), this run + skipped shards
    records_error: int = 0  # records in `errors` only
    windows: int = 0  # record windows explained (rows of `records`; one record can give several), as records_ok
    shards: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    rows: dict = field(default_factory=dict)  # rows written by this run per table
    stage_seconds: dict = field(default_factory=dict)  # sum over shards written by this run
    wall_s: float = 0.0
    records_per_s: float = 0.0  # records of the shards written by this run / wall time
    beats: bool = True  # False: run(beats=False), the beats tables are empty
    resume: dict = field(default_factory=dict)  # what --resume kept and added (empty for a new plan)
    skipped: list = field(default_factory=list)  # files the catalog skipped: [{"path", "reason"}] (hidden, not records)

    def to_dict(self) -> dict:
        return asdict(self)


def summary_rows(s: RunSummary) -> list[tuple[str, str]]:
    """The end-of-run summary as ``(label, value)`` pairs: records, record windows, shards, rows, times."""
    rows = [("output", s.output), ("records (input)", str(s.records)),
            ("records explained / errors", f"{s.records_ok} / {s.records_error}"),
            ("record windows explained", str(s.windows)),
            ("shards written / skipped / total", f"{s.shards_written} / {s.shards_skipped} / {s.shards}")]
    if s.resume:
        r = s.resume
        rows.append(("resume", f"{r['committed_shards']} shards kept ({r['committed_records']} records), "
                               f"{len(r['unfinished_shards'])} rerun, {r['new_records']} new records in "
                               f"{len(r['new_shards'])} new shards"))
    if s.skipped:
        hidden = sum(1 for x in s.skipped if x["reason"] == "hidden")
        names = ", ".join(x["path"] for x in s.skipped[:5]) + (", ..." if len(s.skipped) > 5 else "")
        rows.append(("files skipped (in _manifest.json)",
                     f"{len(s.skipped)}: {hidden} hidden, {len(s.skipped) - hidden} not records ({names})"))
    rows += [(f"rows {k} (this run)", str(v)) for k, v in s.rows.items()]
    if s.stage_seconds:  # summed over the shards written by this run
        rows.append((f"stage s {'/'.join(s.stage_seconds)}", " / ".join(f"{v:.1f}" for v in s.stage_seconds.values())))
    rows += [("wall time", f"{s.wall_s:.1f} s"), ("records/s", f"{s.records_per_s:.2f}")]
    if not s.beats:
        rows.append(("beats", "not computed (beats=False)"))
    return rows


def print_summary(s: RunSummary, console=None) -> None:
    """A rich table (at most 80 columns) on a terminal, plain ``label: value`` lines otherwise."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = summary_rows(s)
    if not console.is_terminal:
        console.print(f"ecgray run {s.run_id}", highlight=False, soft_wrap=True)
        for k, v in rows:
            console.print(f"{k}: {v}", highlight=False, soft_wrap=True, markup=False)
        return
    t = Table(title=f"ecgray run {s.run_id}", show_header=False, width=min(console.width, 80))
    t.add_column("", style="bold", no_wrap=True, ratio=None)
    t.add_column("", justify="right", overflow="fold")
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)

