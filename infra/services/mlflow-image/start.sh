#!/bin/sh
# Start MLflow with its basic-auth app on PostgreSQL, artifacts proxied to S3; or, as
# `ladder-mlflow-start check`, only the checks (the stack's preflight runs that before anything).
set -eu
umask 077  # the auth config written below holds the database password

refuse() { echo "refusing to start: $1 (set it in infra/services/tracking.env)" >&2; exit 1; }

secrets() {
    for name in "$@"; do
        eval "value=\${$name:-}"
        case "$value" in
            "") refuse "$name is not set" ;;
            *change-me*) refuse "$name still holds the placeholder change-me" ;;
        esac
    done
}

if [ "${1:-}" = check ]; then
    secrets POSTGRES_PASSWORD AWS_SECRET_ACCESS_KEY MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
        PREFECT_SERVER_API_AUTH_STRING
    for name in POSTGRES_IMAGE MINIO_IMAGE MC_IMAGE PYTHON_IMAGE PREFECT_IMAGE; do
        eval "value=\${$name:-}"
        echo "$value" | grep -Eq '@sha256:[0-9a-f]{64}$' || refuse "$name is not pinned by digest (NAME:TAG@sha256:...)"
    done
    exit 0
fi
secrets POSTGRES_PASSWORD AWS_SECRET_ACCESS_KEY MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY

# The auth app's config; its admin is created from MLFLOW_AUTH_ADMIN_PASSWORD on the first start.
cat > /tmp/basic_auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Each of the 2 workers trusts a checked password for a minute: a changed password takes
# up to that long to reach the worker that did not make the change.
auth_cache_ttl_seconds = 60
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/basic_auth.ini MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 --workers 2 \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS}" \
    --backend-store-uri "postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/mlflow" \
    --serve-artifacts --artifacts-destination s3://mlflow/
