"""The batch driver and the `ddnm-batch` command: job spec, listing, shard plan, Parquet results.

    from jobs import JobSpec, run_job
    spec = JobSpec.build("examples/s3-eval.yaml", steps=50)   # or JobSpec.build(input=..., ...)
    exit_code = run_job(spec)                                # 0 ok, 3 some images failed

See README.md for the CLI and the output layout, docs/INTERFACES.md for the worker contract.
"""

from jobs.spec import JobError, JobSpec, SpecError


def run_job(spec: JobSpec, *, dry_run: bool = False) -> int:
    """Plan and run `spec` (see jobs.cli.run_job); raises JobError when the job cannot run."""
    from jobs.cli import run_job as _run

    return _run(spec, dry_run=dry_run)


__all__ = ["JobError", "JobSpec", "SpecError", "run_job"]
