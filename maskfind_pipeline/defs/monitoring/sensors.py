"""Why a run failed, in one log line an operator (or a log alert) can act on."""

import os

import dagster as dg

from maskfind_pipeline.alerts import WEBHOOK_ENV, send_alert


def failure_summary(run: dg.DagsterRun, reason: str, steps: dict[str, str]) -> str:
    """One message: which job failed, in which run, why, and each failed step's error."""
    kind = run.tags.get("maskfind/kind", run.job_name)
    lines = [f"{kind} run {run.run_id} ({run.job_name}) failed: {reason}"]
    lines += [f"  step {step}: {error}" for step, error in sorted(steps.items())]
    return "\n".join(lines)


@dg.run_failure_sensor(
    name="run_failure_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    """Log why a run failed (and post it to Slack when `MASKFIND_SLACK_WEBHOOK` is set): the
    run's failure message and each failed step's error, e.g. a blocking check that stopped the
    nightly job, or a training that ran out of memory."""
    steps: dict[str, str] = {}
    for event in context.get_step_failure_events():
        failure = event.step_failure_data
        error = failure.error.message.strip() if failure and failure.error else "unknown error"
        steps[event.step_key or "?"] = error.splitlines()[0][:500]
    reason = context.failure_event.message or "no message"
    text = failure_summary(context.dagster_run, reason, steps)
    send_alert(text, webhook_url=os.environ.get(WEBHOOK_ENV), warn=context.log.warning)
