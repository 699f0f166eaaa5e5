#!/usr/bin/env python3
"""Draws Berth's icon (a bollard on a rounded square) into icons/*.png, icon.ico and icon.icns.

No image library: PNGs are written by hand (zlib + struct); the .ico and .icns hold PNG entries.
Run from src-tauri/: python3 icons/make-icons.py
"""
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def png(size: int, pixel) -> bytes:
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            row.extend(pixel((x + 0.5) / size, (y + 0.5) / size))
        rows.append(bytes(row))
    raw = b"".join(rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def icon(u: float, v: float):
    # Rounded square, radius 0.22, a blue gradient.
    r = 0.22
    dx = max(abs(u - 0.5) - (0.5 - r), 0)
    dy = max(abs(v - 0.5) - (0.5 - r), 0)
    if (dx * dx + dy * dy) ** 0.5 > r:
        return (0, 0, 0, 0)
    base = (int(30 + 20 * v), int(100 + 40 * v), int(200 + 30 * v), 255)
    # A bollard: a cap (wide ellipse) on a post, both white.
    post = abs(u - 0.5) < 0.12 and 0.38 < v < 0.78
    cap = ((u - 0.5) / 0.22) ** 2 + ((v - 0.36) / 0.08) ** 2 < 1
    foot = abs(u - 0.5) < 0.26 and 0.74 < v < 0.80
    if post or cap or foot:
        return (255, 255, 255, 255)
    return base


def main() -> None:
    sizes = {"32x32.png": 32, "128x128.png": 128, "128x128@2x.png": 256, "icon.png": 512}
    data = {}
    for name, size in sizes.items():
        data[size] = png(size, icon)
        (HERE / name).write_bytes(data[size])
    # .ico: PNG-compressed entries (Windows Vista and later).
    entries = [(32, data[32]), (128, data[128]), (256, data[256])]
    head = struct.pack("<HHH", 0, 1, len(entries))
    offset = 6 + 16 * len(entries)
    dirs, blobs = b"", b""
    for size, blob in entries:
        dirs += struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(blob), offset)
        offset += len(blob)
        blobs += blob
    (HERE / "icon.ico").write_bytes(head + dirs + blobs)
    # .icns: ic07 (128), ic08 (256), ic09 (512), PNG payloads.
    body = b""
    for kind, size in ((b"ic07", 128), (b"ic08", 256), (b"ic09", 512)):
        body += kind + struct.pack(">I", 8 + len(data[size])) + data[size]
    (HERE / "icon.icns").write_bytes(b"icns" + struct.pack(">I", 8 + len(body)) + body)


if __name__ == "__main__":
    main()
