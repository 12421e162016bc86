#!/bin/sh
# The MLflow tracking server and model registry for production: runs and registry in PostgreSQL,
# artifacts in S3 (proxied by the server, so clients need no bucket credentials), users and
# permissions by basic auth (mlflow[auth], part of the `production` extra).
#
# Environment (secrets from the environment or a secret store, never from a file in git):
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg2://mlflow@db.internal:5432/mlflow
#   MLFLOW_AUTH_DATABASE_URI      postgresql+psycopg2://mlflow@db.internal:5432/mlflow_auth
#   PGPASSWORD                    the databases' password (libpq reads it; it stays off the URIs)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/mlflow-artifacts
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL (MinIO): the artifact bucket
#   MLFLOW_AUTH_ADMIN_USERNAME    default admin; MLFLOW_AUTH_ADMIN_PASSWORD: its password, used
#                                 once, when the user store is empty
#   MLFLOW_FLASK_SERVER_SECRET_KEY  the UI's CSRF key (required by the auth app; the same on every
#                                 server behind one address)
#   MLFLOW_ALLOWED_HOSTS          Host names clients use (default: localhost and private IPs)
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (4)
# Clients (the pipeline) then set MLFLOW_TRACKING_URI=http://<host>:5000 and
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${MLFLOW_BACKEND_STORE_URI:?e.g. postgresql+psycopg2://mlflow@db.internal:5432/mlflow}"
: "${MLFLOW_AUTH_DATABASE_URI:?e.g. postgresql+psycopg2://mlflow@db.internal:5432/mlflow_auth}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?e.g. s3://bucket/mlflow-artifacts}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?a random string, e.g. from: openssl rand -hex 16}"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"

# The auth config, filled from the environment into a private folder (it names no password).
auth_dir=$(mktemp -d)
python - "$here/basic_auth.ini" "$auth_dir/basic_auth.ini" <<'PY'
import os, string, sys
source, target = sys.argv[1:]
with open(source) as template, open(target, "w") as out:
    out.write(string.Template(template.read()).substitute(os.environ))
PY
export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"

set -- --app-name basic-auth \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-4}"
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
    set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
fi
# MLflow 3 starts job runners (huey consumers) for GenAI jobs; the pipeline submits none.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec mlflow server "$@"
