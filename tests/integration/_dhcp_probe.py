"""A minimal DHCP client for tests: DISCOVER/OFFER/REQUEST/ACK on one interface, with any client MAC.

Run inside a network namespace: ``python _dhcp_probe.py IFACE MAC`` prints ``{"offer": ip, "ack": ip}``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import sys

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6


def packet(xid: int, mac: str, message: int, options: bytes = b"") -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    header = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 0, xid, 0, 0x8000, *(b"\0" * 4,) * 4, chaddr)
    opts = bytes([53, 1, message]) + options + bytes([55, 2, 1, 3, 255])
    return header + b"\0" * 192 + MAGIC + opts


def parse(data: bytes) -> tuple[int, str, dict[int, bytes]]:
    xid = struct.unpack("!I", data[4:8])[0]
    yiaddr = str(ipaddress.IPv4Address(data[16:20]))
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, length = data[i], data[i + 1]
        options[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    return xid, yiaddr, options


def exchange(sock: socket.socket, xid: int, payload: bytes, wanted: set[int]) -> tuple[str, dict[int, bytes]]:
    sock.sendto(payload, ("255.255.255.255", 67))
    while True:
        data, _ = sock.recvfrom(4096)
        reply_xid, yiaddr, options = parse(data)
        if reply_xid == xid and options.get(53, b"\0")[0] in wanted:
            return yiaddr, options


def lease(interface: str, mac: str, timeout: float = 5.0) -> dict[str, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(timeout)
    xid = int.from_bytes(os.urandom(4), "big")
    offer, options = exchange(sock, xid, packet(xid, mac, DISCOVER), {OFFER})
    server = options[54]
    request = bytes([50, 4]) + ipaddress.IPv4Address(offer).packed + bytes([54, 4]) + server
    ack, options = exchange(sock, xid, packet(xid, mac, REQUEST, request), {ACK, NAK})
    result = {"offer": offer, "ack": ack if options[53][0] == ACK else "NAK"}
    sock.close()
    return result


if __name__ == "__main__":
    print(json.dumps(lease(sys.argv[1], sys.argv[2])))
