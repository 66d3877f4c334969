#!/usr/bin/env bash
# Idempotent set-up for a machine of this project's kind (Debian, Python 3.11):
# the Debian packages the local stack needs (PostgreSQL's binaries for a cluster
# of the stack's own, a JDK and Maven for Apache Kafka and Apicurio Registry,
# acl, and for the tests openssl and stunnel4), then a virtual environment in
# .venv with the product (open-bank-command-handler, editable), the development
# tools beside it (devtools/: open-bank-devtools) and the GraphQL endpoint with
# the bank's page (endpoint/: open-bank-endpoint), and for `test` the checkers
# and pytest, and headless Chromium with its driver for the browser tests; for
# `bench` and `test` also .venv-product, the product alone (see below).
# Apicurio Registry (the stack's Schema Registry) needs Java 21 or newer, which
# Debian 12 does not package: machines of this kind carry Temurin 25 in
# /usr/lib/jvm/temurin-25-jdk-amd64; without one this script stops with a
# message saying so. It starts no service: `command-handler stack up` does (and
# fetches Kafka's jars and Apicurio Registry once).
# Usage: scripts/setup.sh [local|bench|test]   (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"

packages=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
command -v pgbench >/dev/null 2>&1 || packages+=(postgresql-client)
command -v java >/dev/null 2>&1 || packages+=(default-jdk-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
command -v setfacl >/dev/null 2>&1 || packages+=(acl)
command -v curl >/dev/null 2>&1 || packages+=(curl)
if [ "$extras" = "test" ]; then
  command -v openssl >/dev/null 2>&1 || packages+=(openssl)
  command -v stunnel4 >/dev/null 2>&1 || packages+=(stunnel4)
fi
if [ "$extras" = "test" ] || [ "$extras" = "bench" ]; then
  # the browser tests and the browser latency test: headless Chromium and its driver, from Debian
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  echo "setup: installing from Debian's packages: ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
# pip install into the environment of interpreter $1, quietly (its "WARNING: Location" lines dropped);
# fails when pip fails
pip_install() {
  "$1" -m pip install -q --disable-pip-version-check "${@:2}" 2>&1 | { grep -v "^WARNING: Location" || true; }
}

product="."
[ "$extras" = "test" ] && product=".[dev]"
stamp=".venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ devtools/pyproject.toml -nt "$stamp" ] \
    || [ endpoint/pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the product and the development tools ($extras)"
  pip_install .venv/bin/python --upgrade pip || true
  pip_install .venv/bin/python -e "$product" -e ./devtools -e ./endpoint
  .venv/bin/python -c "import command_handler, open_bank_devtools, open_bank_endpoint, confluent_kafka, sqlalchemy, alembic"
  touch "$stamp"
fi

# bench and test: the product alone in .venv-product (editable, its own dependencies and nothing else), the
# handler the latency tests and the benchmark start, so what they measure is what ships: in .venv the
# tools' dependencies change what the product's libraries import (Selenium brings trio, which the
# registry client's HTTP library imports whenever it is installed: +2.7 MiB when the client is made).
# Made again from nothing when pyproject.toml changed, so a dependency dropped there is gone here too
# (any of the three modes refreshes one that exists).
if [ "$extras" = "test" ] || [ "$extras" = "bench" ] || [ -d .venv-product ]; then
  if [ ! -f .venv-product/.installed ] || [ pyproject.toml -nt .venv-product/.installed ]; then
    echo "setup: making .venv-product (the product alone)"
    rm -rf .venv-product
    python3 -m venv .venv-product
    pip_install .venv-product/bin/python -e .
    # from another folder, so the installed product is imported, not the source tree beside it
    (cd / && "$OLDPWD/.venv-product/bin/python" -c "import command_handler.bootstrap, command_handler.entrypoints.cli")
    touch .venv-product/.installed
  fi
fi

# Apicurio Registry needs Java 21 or newer (Debian 12's packages stop at 17): found, or a clear error
.venv/bin/python - <<'PY'
import sys

from open_bank_devtools.stack.apicurio import ApicurioError, find_java

try:
    find_java()
except ApicurioError as err:
    sys.exit(f"setup: {err}")
PY
