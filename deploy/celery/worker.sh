#!/bin/sh
# One celery worker for maskfind's steps: deploy/celery/worker.sh NAME [celery worker options]
# e.g. `deploy/celery/worker.sh gpu-1 --concurrency 1`. It reads the executor's config
# (MASKFIND_EXECUTOR_CONFIG, default deploy/celery/executor.yaml) and listens on its queue.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: deploy/celery/worker.sh NAME [celery worker options]}
shift
config=${MASKFIND_EXECUTOR_CONFIG:-$here/executor.yaml}
queue=$(python -c 'import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["execution"]["config"]["config_source"]["task_default_queue"])' "$config")
exec dagster-celery worker start --app dagster_celery.app --config-yaml "$config" \
    --queue "$queue" --name "$name" -- "$@"
