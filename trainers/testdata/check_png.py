"""Decodes a PNG written by trainers/png.cc with nothing but the standard
library and checks it: signature, chunk CRCs, IHDR, the pixel data size, and
the colours at given pixels. Usage: check_png.py FILE W H [x,y,rrggbb ...]"""
import struct
import sys
import zlib


def main():
    path, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind}"
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"], [k for k, _ in chunks]
    width, height, depth, color, comp, filt, inter = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, color, comp, filt, inter) == (w, h, 8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == h * (1 + 3 * w), len(raw)
    for spec in sys.argv[4:]:
        x, y, rgb = spec.split(",")
        x, y = int(x), int(y)
        row = raw[y * (1 + 3 * w):(y + 1) * (1 + 3 * w)]
        assert row[0] == 0, "filter byte"
        got = row[1 + 3 * x:1 + 3 * x + 3].hex()
        assert got == rgb.lower(), f"pixel ({x},{y}) is {got}, expected {rgb}"
    print("ok")


main()
