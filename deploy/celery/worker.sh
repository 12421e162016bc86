#!/bin/sh
# One celery worker for maskfind's steps: deploy/celery/worker.sh NAME [celery worker options]
# e.g. `deploy/celery/worker.sh gpu-1 --concurrency 1`. It reads the executor's config
# (MASKFIND_EXECUTOR_CONFIG, default deploy/celery/executor.yaml) and listens on its queue.
# The app (maskfind_celery_app.py, beside this script) is dagster-celery's, configured in memory:
# unlike `dagster-celery worker start`, nothing holding the broker's password is written to disk.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: deploy/celery/worker.sh NAME [celery worker options]}
shift
MASKFIND_EXECUTOR_CONFIG=${MASKFIND_EXECUTOR_CONFIG:-$here/executor.yaml}
export MASKFIND_EXECUTOR_CONFIG
queue=$(python -c 'import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["execution"]["config"]["config_source"]["task_default_queue"])' "$MASKFIND_EXECUTOR_CONFIG")
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
exec celery -A maskfind_celery_app worker --prefetch-multiplier=1 --loglevel INFO \
    -Q "$queue" -n "$name@%h" "$@"
