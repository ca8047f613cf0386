"""Ray job entry point: ``ecgray run`` on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/explain_dataset.py --input s3://bucket/cpsc/ --output s3://bucket/out/ \
        --model demo --methods saliency --targets all --shard-size 32 --resume

Takes exactly the options of ``ecgray run`` (see ``--help``). Inside a Ray job
``RAY_ADDRESS`` is set, so the pipeline joins the job's cluster. The working
directory upload skips what ``.gitignore`` lists (``.venv/``, caches).
"""
from __future__ import annotations

import os
import sys

# The uploaded working dir is the job's cwd; make `ecgray` (and its `ecgray.schemas`) importable from it even when
# they are not installed on the cluster (python puts jobs/, not the cwd, on sys.path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecgray.cli import app  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    app(["run", *(sys.argv[1:] if argv is None else argv)], prog_name="explain_dataset.py")


if __name__ == "__main__":
    main()
