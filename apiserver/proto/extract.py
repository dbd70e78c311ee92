#!/usr/bin/env python3
"""Extracts Kubernetes' protobuf file descriptors from a kubectl binary.

Go binaries built from k8s.io/api register every generated.proto as a
gzipped FileDescriptorProto. This pulls out the ones keel-apiserver decodes
(the served group-versions and their imports) and writes them as one
FileDescriptorSet. Usage:

    python3 apiserver/proto/extract.py /usr/bin/kubectl apiserver/proto/k8s.fds
"""
import re
import sys
import zlib

ROOTS = [
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/batch/v1/generated.proto",
    "k8s.io/api/coordination/v1/generated.proto",
    "k8s.io/api/autoscaling/v2/generated.proto",
    "k8s.io/api/networking/v1/generated.proto",
    "k8s.io/api/policy/v1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
    "k8s.io/api/authentication/v1/generated.proto",
    "k8s.io/api/authorization/v1/generated.proto",
    "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
    "k8s.io/apimachinery/pkg/runtime/generated.proto",
]


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        wt = key & 7
        if wt == 2:
            n, i = varint(buf, i)
            yield key >> 3, buf[i:i + n]
            i += n
        elif wt == 0:
            _, i = varint(buf, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError("bad wire type")


def encode_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


GOGO = "github.com/gogo/protobuf/gogoproto/gogo.proto"


def strip_gogo(fd):
    """The descriptor without its import of gogo.proto (only options use it)."""
    out = bytearray()
    i = 0
    while i < len(fd):
        start = i
        key, i = varint(fd, i)
        wt = key & 7
        if wt == 2:
            n, i = varint(fd, i)
            val = fd[i:i + n]
            i += n
            if key >> 3 == 3 and val.decode() == GOGO:
                continue
        elif wt == 0:
            _, i = varint(fd, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        out += fd[start:i]
    return bytes(out)


# Raw (not gzipped) descriptors of protobuf-go: OpenAPI v2 (gnostic), which
# kubectl up to 1.27 fetches as protobuf from /openapi/v2, and its import.
RAW = ["google/protobuf/any.proto", "openapiv2/OpenAPIv2.proto"]


def raw_descriptor(data, name):
    """The FileDescriptorProto embedded uncompressed for `name`."""
    needle = b"\x0a" + encode_varint(len(name)) + name.encode()
    for m in re.finditer(re.escape(needle), data):
        i = m.start()
        try:
            while True:
                key, j = varint(data, i)
                num, wt = key >> 3, key & 7
                if not 1 <= num <= 14 or wt not in (0, 2):
                    break
                if wt == 2:
                    n, j = varint(data, j)
                    j += n
                else:
                    _, j = varint(data, j)
                i = j
                if num == 12:
                    return data[m.start():i]
        except IndexError:
            continue
    sys.exit(f"{name}: raw descriptor not found")


def main(binary, out_path):
    data = open(binary, "rb").read()
    files = {}
    for m in re.finditer(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00", data):
        try:
            fd = zlib.decompressobj(31).decompress(data[m.start():m.start() + 4_000_000])
        except zlib.error:
            continue
        try:
            parsed = dict()
            deps = []
            for num, val in fields(fd):
                if num == 1:
                    parsed["name"] = val.decode()
                elif num == 3:
                    deps.append(val.decode())
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        name = parsed.get("name", "")
        if name.startswith("k8s.io/") and name not in files:
            files[name] = (strip_gogo(fd), [d for d in deps if d != GOGO])
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            sys.exit(f"{name} not found in {binary}")
        for d in files[name][1]:
            visit(d)
        order.append(name)

    for r in ROOTS:
        visit(r)
    with open(out_path, "wb") as f:
        for name in RAW:
            fd = raw_descriptor(data, name)
            f.write(b"\x0a" + encode_varint(len(fd)) + fd)
        for name in order:
            fd = files[name][0]
            f.write(b"\x0a" + encode_varint(len(fd)) + fd)
    print("\n".join(RAW + order))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
