"""The pyinfra bookkeeping kvm-qemu reads (operations/util/pyinfra_adapter.py), on a real pyinfra run."""

from __future__ import annotations

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.operations import server
from pyinfra_testing.util import FakeState

from operations.util.pyinfra_adapter import executed_operations, nested_commands


def test_counts_the_operations_that_ran_commands_on_a_host() -> None:
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    local = inventory.get_host("@local")
    assert executed_operations(state, local) == 0
    add_op(state, server.shell, name="runs a command", commands=["true"])
    add_op(state, server.shell, name="runs nothing", commands=[])
    add_op(state, server.shell, name="runs another", commands=["true"])
    # Operations not yet run count for nothing.
    assert executed_operations(state, local) == 0
    run_ops(state)
    assert executed_operations(state, local) == 2


def test_a_state_without_operation_records_is_unknown() -> None:
    assert executed_operations(FakeState(), object()) is None


def test_nested_commands_are_the_other_operations_commands() -> None:
    commands = list(nested_commands(server.shell, commands=["true", "echo hi"]))
    assert [str(c) for c in commands] == ["true", "echo hi"]


def test_a_new_ssh_connection_uses_the_connector_pyinfra_builds() -> None:
    # The private pieces new_ssh_connection relies on: a pyinfra that renames them fails here first.
    inventory = Inventory((["localhost"], {}))
    state = State(inventory, Config())
    connector = SSHConnector(state, inventory.get_host("localhost"))
    assert callable(getattr(connector, "_connect", None))
    assert hasattr(connector, "client") and connector.client is None
