#!/usr/bin/env bash
# Idempotent set-up for a machine of this project's kind (Debian, Python 3.11):
# a virtual environment in .venv with the project and its extras, and a running
# PostgreSQL. Usage: scripts/setup.sh [EXTRAS]   (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"

if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "setup: installing PostgreSQL from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if [ "$extras" = "test" ] && ! command -v stunnel4 >/dev/null 2>&1; then
  echo "setup: installing stunnel4 and openssl (TLS tests put stunnel in front of the broker)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 openssl >/dev/null
fi
if [ "$extras" != "local" ] && ! command -v pgbench >/dev/null 2>&1; then
  echo "setup: installing pgbench (the benchmark's database ceiling)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "setup: starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=".venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project with extras [$extras]"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import command_handler, confluent_kafka, sqlalchemy, alembic" 
  touch "$stamp"
fi
