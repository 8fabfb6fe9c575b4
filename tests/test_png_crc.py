"""Every PNG chunk CRC is checked: a flipped image-data byte is refused, not decoded."""

import zlib

import numpy as np
import pytest
from PIL import Image

from lumbarclip.data.imageio import load_image
from lumbarclip.errors import InputError


def _chunks(data: bytes):
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        yield pos, data[pos + 4 : pos + 8], length
        pos += 12 + length


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "slice.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return path


def test_intact_png_reads(png):
    assert load_image(png).shape == (32, 32)


def test_flipped_idat_byte_is_refused(png):
    data = bytearray(png.read_bytes())
    pos, kind, length = next(c for c in _chunks(bytes(data)) if c[1] == b"IDAT")
    data[pos + 8 + length // 2] ^= 0x01
    # the stored CRC no longer matches (an independent check of the corruption itself)
    stored = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
    assert zlib.crc32(bytes(data[pos + 4 : pos + 8 + length])) != stored
    png.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"slice\.png: corrupt PNG \(CRC mismatch in 'IDAT'"):
        load_image(png)


def test_truncated_png_is_refused(png):
    data = png.read_bytes()
    png.write_bytes(data[:-20])
    with pytest.raises(InputError, match="corrupt PNG"):
        load_image(png)
