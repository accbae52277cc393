"""The sandbox keeps its own table of Microsoft's published ids, so a wrong id in the client fails.

The sandbox's table (presencectl/sandbox/microsoft_ids.py) is written from Microsoft's material;
the client's (presencectl/graph/permissions.py) is what setup-azure sends. They must agree, and
the sandbox must refuse what a real tenant would refuse when they do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from presencectl.graph import permissions as client
from presencectl.sandbox import microsoft_ids as microsoft

ADMIN = "admin@contoso.example"


def test_the_sandbox_does_not_import_the_clients_ids() -> None:
    sandbox_dir = Path(microsoft.__file__).parent
    for path in sandbox_dir.glob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("presencectl.graph"), path.name
                assert not (node.module or "").startswith("presencectl.identity"), path.name


def test_the_clients_ids_are_microsofts() -> None:
    assert client.GRAPH_APP_ID == microsoft.GRAPH_APP_ID
    assert client.GRAPH_RESOURCE == microsoft.GRAPH_RESOURCE
    assert client.GLOBAL_ADMIN_ROLE_TEMPLATE_ID == microsoft.GLOBAL_ADMIN_ROLE_TEMPLATE_ID
    for name, role_id in client.APP_ROLES.items():
        assert microsoft.GRAPH_APP_ROLE_IDS[name] == role_id, name
    for name, scope_id in client.DELEGATED_SCOPES.items():
        assert microsoft.GRAPH_SCOPE_IDS[name][0] == scope_id, name


@pytest.fixture
def sbx() -> Iterator[Any]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        yield sb


def test_a_wrong_permission_id_in_the_client_is_refused(
    sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One digit off, as a typo would be: a real tenant has no such app role on Microsoft Graph.
    wrong = "83cded22-8297-4ff6-a7fa-e97e9545a250"
    monkeypatch.setitem(client.APP_ROLES, "Presence.ReadWrite.All", wrong)
    result = cli("--profile", "sandbox", "--no-input", "-o", "json", "setup-azure")
    assert result.exit_code == 1, result.stdout
    error = result.json()["error"]
    assert error["code"] == "graph_error"
    assert "appRoleAssignedTo" in error["message"]
    assert "not found" in error["message"]
    graph_sp = sbx.world.graph_service_principal
    assert wrong not in {r["id"] for r in graph_sp["appRoles"]}


def test_a_wrong_global_admin_template_id_in_the_client_is_refused(
    sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.identity import setup

    monkeypatch.setattr(
        setup, "GLOBAL_ADMIN_ROLE_TEMPLATE_ID", "62e90394-69f5-4237-9190-012177145e11"
    )
    result = cli("--profile", "sandbox", "--no-input", "-o", "json", "setup-azure")
    assert result.exit_code == 3
    assert result.json()["error"]["code"] == "prerequisite_global_admin"
