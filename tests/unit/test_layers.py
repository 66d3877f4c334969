"""The layering rules, checked on the import statements of the product's modules."""

import ast
from pathlib import Path

import command_handler

PRODUCT = Path(command_handler.__file__).resolve().parent


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules(folder: Path) -> dict[str, set[str]]:
    return {str(p.relative_to(PRODUCT)): imports_of(p) for p in folder.rglob("*.py")}


def test_no_module_of_the_product_imports_the_tools() -> None:
    offenders = {m for m, names in modules(PRODUCT).items() if any(n.startswith("open_bank_devtools") for n in names)}
    assert offenders == set()


def test_no_module_of_the_product_imports_the_endpoint() -> None:
    offenders = {m for m, names in modules(PRODUCT).items() if any(n.startswith("open_bank_endpoint") for n in names)}
    assert offenders == set()


def test_bootstrap_imports_no_entrypoint() -> None:
    assert not any(n.startswith("command_handler.entrypoints") for n in imports_of(PRODUCT / "bootstrap.py"))


def test_the_domain_is_pure() -> None:
    allowed = (
        "command_handler.domain",
        "__future__",
        "collections.abc",
        "dataclasses",
        "functools",
        "uuid",
        "secrets",
        "typing",
    )
    for module, names in modules(PRODUCT / "domain").items():
        assert all(n.startswith(allowed) for n in names), (module, names)


def test_the_service_layer_imports_no_driver_and_no_adapter() -> None:
    forbidden = ("sqlalchemy", "psycopg", "confluent_kafka", "command_handler.adapters")
    for module, names in modules(PRODUCT / "service_layer").items():
        assert not any(n.startswith(forbidden) for n in names), (module, names)
