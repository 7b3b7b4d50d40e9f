"""kupd.journal: journald's native protocol, read back from a datagram socket the test owns
(the real journald reads it in tests/system/test_nodes.py)."""

from __future__ import annotations

import array
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kupd.journal import JournalSocket, encode, valid_field


def decode(data: bytes) -> dict[str, str]:
    """The journald side of the format, written from the protocol description."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            out[line.decode()] = data[nl + 9:nl + 9 + size].decode()
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return out


def test_encode_plain_and_multiline_values() -> None:
    raw = encode({"MESSAGE": "line one\nline two", "PRIORITY": 6, "KUPD_STEP": "drain", "SKIPPED": None})
    assert raw.startswith(b"MESSAGE\n" + struct.pack("<Q", 17) + b"line one\nline two\n")
    assert decode(raw) == {"MESSAGE": "line one\nline two", "PRIORITY": "6", "KUPD_STEP": "drain"}


@pytest.mark.parametrize("name", ["_PID", "lower", "KUPD-STEP", "", "A" * 65, "MESSAGE=X"])
def test_field_names_journald_refuses_are_errors(name: str) -> None:
    assert not valid_field(name)
    with pytest.raises(ValueError, match="not a journal field name"):
        encode({name: "x"})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def test_send_one_datagram(server: tuple[socket.socket, str]) -> None:
    sock, path = server
    j = JournalSocket(path)
    j.send("hello", PRIORITY="6", KUPD_NODE="worker-1", CODE_LINE=12)
    assert decode(sock.recv(65536)) == {"MESSAGE": "hello", "PRIORITY": "6", "KUPD_NODE": "worker-1",
                                        "CODE_LINE": "12"}
    j.close()


def test_entry_too_large_for_a_datagram_goes_through_a_sealed_memfd(server: tuple[socket.socket, str]) -> None:
    sock, path = server
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = "traceback line\n" * 40000  # 600 kB: more than a datagram may carry
    JournalSocket(path).send(big, KUPD_STEP="drain")
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
    assert data == b""
    level, kind, payload = ancdata[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fds.frombytes(payload[:fds.itemsize])
    fd = fds[0]
    try:
        import fcntl

        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL  # journald refuses unsealed memfds
        size = os.fstat(fd).st_size
        assert decode(os.pread(fd, size, 0)) == {"MESSAGE": big, "KUPD_STEP": "drain"}
    finally:
        os.close(fd)
