"""What `command-handler run` imports before it connects: nothing it does not use (memory at rest is mostly imports)."""

import json
import subprocess
import sys

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


def test_a_client_that_asks_the_stand_in_for_more_is_imported_the_plain_way() -> None:
    # the module as a later confluent_kafka would meet it: its stand-in lacks a name that the client imports
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.find_spec('command_handler.adapters.registry_client')\n"
        "source = spec.loader.get_source(spec.name)\n"
        'narrowed = source.replace(\'_DEFERRED = ("OAuth2Client", "AsyncOAuth2Client")\', \'_DEFERRED = ("OAuth2Client",)\')\n'
        "assert narrowed != source\n"
        "space = {'__name__': 'registry_client_variant'}\n"
        "exec(compile(narrowed, 'registry_client_variant', 'exec'), space)\n"
        "import authlib.integrations.httpx_client as real\n"
        "from confluent_kafka.schema_registry._async import schema_registry_client as asynchronous\n"
        "result['real'] = asynchronous.AsyncOAuth2Client is real.AsyncOAuth2Client\n"
        "result['client'] = space['SchemaRegistryClient'].__module__\n"
    )
    result = run_fresh(code)["result"]
    assert result == {"real": True, "client": "confluent_kafka.schema_registry._sync.schema_registry_client"}


def test_a_client_that_does_more_with_the_stand_in_at_import_is_imported_the_plain_way() -> None:
    # a later confluent_kafka whose import fails on the stand-in otherwise than by a missing name: TypeError here
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.find_spec('command_handler.adapters.registry_client')\n"
        "source = spec.loader.get_source(spec.name)\n"
        'narrowed = source.replace(\'_DEFERRED = ("OAuth2Client", "AsyncOAuth2Client")\', \'_DEFERRED = ("OAuth2Client",)\')\n'
        "narrowed = narrowed.replace('raise AttributeError(', 'raise TypeError(')\n"
        "assert narrowed.count('raise TypeError(') == 1 and 'raise AttributeError(' not in narrowed\n"
        "space = {'__name__': 'registry_client_variant'}\n"
        "exec(compile(narrowed, 'registry_client_variant', 'exec'), space)\n"
        "import authlib.integrations.httpx_client as real\n"
        "from confluent_kafka.schema_registry._async import schema_registry_client as asynchronous\n"
        "result['real'] = asynchronous.AsyncOAuth2Client is real.AsyncOAuth2Client\n"
        "result['client'] = space['SchemaRegistryClient'].__module__\n"
    )
    result = run_fresh(code)["result"]
    assert result == {"real": True, "client": "confluent_kafka.schema_registry._sync.schema_registry_client"}
