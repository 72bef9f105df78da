#!/usr/bin/env bash
# Database per service: each medmesh service gets its own login role and its own database, owned
# by that role, so one service's credentials cannot read another's tables. The postgres image runs
# this once, when the data volume is empty; later changes to MEDMESH_DATABASES need a fresh volume
# (docker compose down -v) or the same statements run by hand.
#
# The password of service <name> comes from <NAME>_DB_PASSWORD, falling back to "<name>-dev" so a
# laptop needs no setup; anything shared must set real ones.
set -euo pipefail

for service in ${MEDMESH_DATABASES:?MEDMESH_DATABASES must list the service databases}; do
  if [[ ! "$service" =~ ^[a-z][a-z0-9_]*$ ]]; then
    echo "init-databases: \"$service\" is not a plain lower-case identifier" >&2
    exit 1
  fi
  password_var="$(tr '[:lower:]' '[:upper:]' <<<"$service")_DB_PASSWORD"
  password="${!password_var:-${service}-dev}"
  # The psql variables are quoted by psql itself (:'name'), so a password with quotes stays data.
  psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v svc="$service" -v pw="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'svc', :'pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'svc') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'svc', :'svc')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'svc') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'svc') \gexec
SQL
  echo "init-databases: database and role \"$service\" ready"
done
