#!/usr/bin/env python3
"""Read or set one integer server parameter of a local MongoDB-compatible
server.

    python3 scripts/lib/mongo_parameter.py PORT NAME          # prints it
    python3 scripts/lib/mongo_parameter.py PORT NAME VALUE    # sets it

infra.sh needs exactly this: `setParameter` on the secantusd-rs it starts
(which takes no such setting on its command line), and `getParameter` on a
server it reuses. A fresh machine has neither mongosh nor pymongo, and each
command is one OP_MSG
(https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/), so it
is written out here with the standard library rather than installing a
driver for it. Exits non-zero, with the server's message, if it is refused.
"""

import socket
import struct
import sys

OP_MSG = 2013


def encode(document):
    """BSON for a flat document of int32 and string values (all this sends)."""
    body = b""
    for key, value in document.items():
        name = key.encode() + b"\0"
        if isinstance(value, int):
            body += b"\x10" + name + struct.pack("<i", value)
        else:
            text = value.encode() + b"\0"
            body += b"\x02" + name + struct.pack("<i", len(text)) + text
    return struct.pack("<i", len(body) + 5) + body + b"\0"


# Sizes of the BSON values a reply's top level may hold, to step over them.
FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def decode_top_level(data):
    """The reply's top-level numbers and strings: `ok`, `errmsg`, a parameter."""
    found, at, end = {}, 4, struct.unpack_from("<i", data)[0] - 1
    while at < end:
        kind = data[at]
        name_end = data.index(b"\0", at + 1)
        name = data[at + 1 : name_end].decode()
        at = name_end + 1
        if kind == 0x01:
            found[name] = struct.unpack_from("<d", data, at)[0]
        elif kind in (0x10, 0x12):
            found[name] = struct.unpack_from("<i" if kind == 0x10 else "<q", data, at)[0]
        elif kind == 0x02:
            length = struct.unpack_from("<i", data, at)[0]
            found[name] = data[at + 4 : at + 3 + length].decode(errors="replace")
        if kind in FIXED:
            at += FIXED[kind]
        elif kind in (0x02, 0x0D, 0x0E):
            at += 4 + struct.unpack_from("<i", data, at)[0]
        elif kind in (0x03, 0x04):
            at += struct.unpack_from("<i", data, at)[0]
        elif kind == 0x05:
            at += 5 + struct.unpack_from("<i", data, at)[0]
        else:
            raise ValueError(f"unexpected BSON type {kind:#x} in the reply")
    return found


def command(port, document):
    payload = struct.pack("<I", 0) + b"\0" + encode(document)
    message = struct.pack("<iiii", 16 + len(payload), 1, 0, OP_MSG) + payload
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(message)
        header = b""
        while len(header) < 16:
            chunk = conn.recv(16 - len(header))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            header += chunk
        length, _, _, opcode = struct.unpack("<iiii", header)
        body = b""
        while len(body) < length - 16:
            chunk = conn.recv(length - 16 - len(body))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            body += chunk
    if opcode != OP_MSG or body[4] != 0:
        raise ValueError(f"unexpected reply (opcode {opcode})")
    return decode_top_level(body[5:])


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    port, name = int(sys.argv[1]), sys.argv[2]
    if len(sys.argv) == 3:
        reply = command(port, {"getParameter": 1, name: 1, "$db": "admin"})
        if reply.get("ok") != 1 or name not in reply:
            sys.exit(f"getParameter {name} refused: {reply.get('errmsg', reply)}")
        print(reply[name])
        return
    value = int(sys.argv[3])
    reply = command(port, {"setParameter": 1, name: value, "$db": "admin"})
    if reply.get("ok") != 1:
        sys.exit(f"setParameter {name}={value} refused: {reply.get('errmsg', reply)}")


if __name__ == "__main__":
    main()
