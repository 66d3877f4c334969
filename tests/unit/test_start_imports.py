"""What `command-handler run` imports before it connects: nothing it does not use (memory at rest is mostly imports)."""

import json
import subprocess
import sys

import pytest

# what the run path must not load: OAuth for the registry (never configured), migrations, keystores, the tools
NOT_AT_START = ("authlib", "joserfc", "cryptography", "alembic", "jks", "open_bank_devtools", "open_bank_endpoint")


def run_fresh(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; what it leaves in ``result`` (a dict), and the modules loaded then."""
    probe = (
        f"result = {{}}\n{code}\nimport json, sys\n"
        "print(json.dumps({'result': result, 'modules': sorted(sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.splitlines()[-1]))


def packages(modules: object) -> set[str]:
    assert isinstance(modules, list)
    return {name.split(".")[0] for name in modules}


def test_the_run_path_loads_no_oauth_no_migrations_no_keystores_and_no_tools() -> None:
    modules = run_fresh("import command_handler.entrypoints.cli, command_handler.bootstrap")["modules"]
    assert isinstance(modules, list)
    assert "confluent_kafka.schema_registry" in modules and "sqlalchemy" in modules  # the run path was imported
    # (the stand-in for Authlib's module is gone too: it would be listed under "authlib")
    assert sorted(p for p in packages(modules) if p.startswith(NOT_AT_START)) == []


def test_an_oauth_client_built_after_the_import_is_authlibs_own() -> None:
    code = (
        "import sys\n"
        "import command_handler.adapters.registry_client\n"
        "from confluent_kafka.schema_registry._sync import schema_registry_client as sync\n"
        "from confluent_kafka.schema_registry._async import schema_registry_client as asynchronous\n"
        "result['authlib before'] = any(m.startswith('authlib') for m in sys.modules)\n"
        "built = sync.OAuth2Client(client_id='id', client_secret='secret', scope='scope')\n"
        "built_async = asynchronous.AsyncOAuth2Client(client_id='id', client_secret='secret', scope='scope')\n"
        "import authlib.integrations.httpx_client as real\n"
        "result['factories'] = [sync.OAuth2Client is not real.OAuth2Client,\n"
        "    asynchronous.AsyncOAuth2Client is not real.AsyncOAuth2Client]\n"
        "result['built'] = [type(built) is real.OAuth2Client, type(built_async) is real.AsyncOAuth2Client]\n"
    )
    result = run_fresh(code)["result"]
    assert result == {"authlib before": False, "factories": [True, True], "built": [True, True]}


# a later confluent_kafka's import as the stand-in would meet it: it lacks a name that the client imports, and
# the missing name fails as a module's does (AttributeError, turned into ImportError by ``from ... import``) or
# otherwise (TypeError here: what a release doing more with the names at import could raise)
NARROWED = (('_DEFERRED = ("OAuth2Client", "AsyncOAuth2Client")', '_DEFERRED = ("OAuth2Client",)'),)
FAILING_OTHERWISE = (*NARROWED, ("raise AttributeError(", "raise TypeError("))


@pytest.mark.parametrize("changes", [NARROWED, FAILING_OTHERWISE], ids=["missing-name", "type-error"])
def test_a_client_whose_import_fails_on_the_stand_in_is_imported_the_plain_way(
    changes: tuple[tuple[str, str], ...],
) -> None:
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.find_spec('command_handler.adapters.registry_client')\n"
        "variant = spec.loader.get_source(spec.name)\n"
        f"for old, new in {changes!r}:\n"
        "    assert variant.count(old) == 1\n"
        "    variant = variant.replace(old, new)\n"
        "space = {'__name__': 'registry_client_variant'}\n"
        "exec(compile(variant, 'registry_client_variant', 'exec'), space)\n"
        "import authlib.integrations.httpx_client as real\n"
        "from confluent_kafka.schema_registry._async import schema_registry_client as asynchronous\n"
        "result['real'] = asynchronous.AsyncOAuth2Client is real.AsyncOAuth2Client\n"
        "result['client'] = space['SchemaRegistryClient'].__module__\n"
    )
    result = run_fresh(code)["result"]
    assert result == {"real": True, "client": "confluent_kafka.schema_registry._sync.schema_registry_client"}
