#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite. The tests start their
# own local stack (Apache Kafka, or Tansu with TEST_BROKER=tansu; Apicurio Registry
# and a PostgreSQL cluster of their own, on free ports) and stop it;
# see tests/conftest.py to point them at external services instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
