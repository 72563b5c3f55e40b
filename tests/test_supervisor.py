import os
import socket

from darkroom import supervisor
from darkroom.contract.roles import ROLES
from darkroom.ports import taken_ports
from harness.launch import HOST, free_port


class _Exited:
    returncode = 1

    def poll(self) -> int:
        return self.returncode


def test_a_taken_port_is_named_with_the_process_holding_it():
    free = free_port()
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        (line,) = taken_ports(HOST, {"master": port, "storage": free})
    assert line.startswith(f"port {port} (master) is taken by pid {os.getpid()} (")
    assert taken_ports(HOST, {"master": port}) == []  # closed: free again


def test_a_child_that_keeps_dying_at_start_is_given_up_on(tmp_path, monkeypatch):
    """A child that could not bind its port was restarted forever, one error line at a time."""
    monkeypatch.setenv("DARKROOM_INTERNAL_TOKEN", "t")
    up = supervisor.Supervisor(tmp_path / "data", dict.fromkeys(ROLES, 1))
    child = up._children["master"]

    def start_and_die() -> None:
        child.restarts.started()
        child.process = _Exited()

    child.start = start_and_die
    start_and_die()
    starts = 1
    for _ in range(4 * supervisor.GIVE_UP_AFTER):
        if not up._restart_dead():
            break
        if child.restart_at is not None:
            child.restart_at = 0.0  # the backoff is over at once
        else:
            starts += 1
    assert starts == supervisor.GIVE_UP_AFTER  # and it gave up, instead of looping forever
    assert not up._restart_dead()
