"""What `command-handler run` imports before it connects: nothing it does not use (memory at rest is mostly imports)."""

import json
import subprocess
import sys

# what the run path must not load: OAuth for the registry (never configured), migrations, keystores, the tools
NOT_AT_START = ("authlib", "joserfc", "cryptography", "alembic", "jks", "open_bank_devtools", "open_bank_endpoint")


def loaded_after(code: str) -> list[str]:
    """The top-level packages a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(result.stdout.splitlines()[-1]))


def test_the_run_path_loads_no_oauth_no_migrations_no_keystores_and_no_tools() -> None:
    loaded = loaded_after("import command_handler.entrypoints.cli, command_handler.bootstrap")
    assert "confluent_kafka" in loaded and "sqlalchemy" in loaded  # the probe did import the run path
    # (the stand-in for Authlib's module is gone too: it would be listed as "authlib")
    assert [name for name in loaded if name.startswith(NOT_AT_START)] == []


def test_the_registry_clients_oauth_class_is_still_the_real_one_when_built() -> None:
    code = (
        "import command_handler.adapters.registry_client\n"
        "from confluent_kafka.schema_registry._sync import schema_registry_client as sync\n"
        "built = sync.OAuth2Client(client_id='id', client_secret='secret', scope='scope')\n"
        "import authlib.integrations.httpx_client as real\n"
        "assert isinstance(built, real.OAuth2Client), type(built)\n"
        "assert real.OAuth2Client.__module__.startswith('authlib.')  # the real module, not the stand-in\n"
    )
    assert "authlib" in loaded_after(code)
