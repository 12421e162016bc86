"""The celery app of maskfind's workers (`deploy/celery/worker.sh` runs `celery -A` on it).

It is dagster-celery's app, configured in memory from the executor's YAML (MASKFIND_EXECUTOR_CONFIG,
its `{env: ...}` values resolved, so the broker's password comes from the environment).
`dagster-celery worker start` would write the broker URL, password included, into a Python file
under `$DAGSTER_HOME/dagster_celery/config/` with the default umask and never remove it; this app
writes nothing.
"""

import os
from collections.abc import Mapping
from typing import Any

from dagster_celery.cli import get_validated_config
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task


def worker_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The celery settings dagster-celery's config file would hold for `config`."""
    options: dict[str, Any] = {}
    if config.get("broker"):
        options["broker_url"] = str(config["broker"])
    if config.get("backend"):
        options["result_backend"] = str(config["backend"])
    options.update(config.get("config_source") or {})
    return options


app = make_app()  # dagster_celery.defaults, and the queue and routes of its tasks
app.conf.update(worker_settings(get_validated_config(os.environ["MASKFIND_EXECUTOR_CONFIG"])))

execute_plan = create_task(app)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
