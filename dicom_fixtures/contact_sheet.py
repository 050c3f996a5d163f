"""Contact sheet: a grid of thumbnails, one row per class plus one row of bad fields."""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .synth import BAD_KINDS, CLASSES, make_bad_field, make_field

THUMB_WIDTH = 192
LABEL_WIDTH = 120
MAX_BYTES = 1_400_000


def _thumb(pixels: np.ndarray, width: int) -> Image.Image:
    img = Image.fromarray(pixels).convert("RGB")
    height = round(img.height * width / img.width)
    return img.resize((width, height), Image.Resampling.LANCZOS)


def contact_sheet(per_class: int, seed: int, difficulty: float = 0.5, thumb_width: int = THUMB_WIDTH) -> Image.Image:
    """Thumbnails of ``per_class`` fields per class (seeds seed, seed+1, ...) and every bad kind."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rows: list[tuple[str, list[Image.Image]]] = []
    for label in CLASSES:
        rows.append((label, [_thumb(make_field(label, seed + i, difficulty), thumb_width) for i in range(per_class)]))
    bad = [_thumb(make_bad_field(kind, seed + i), thumb_width) for i, kind in enumerate(BAD_KINDS)]
    rows.append(("bad / OOD", bad))
    th = rows[0][1][0].height
    gap = 4
    cols = max(len(r[1]) for r in rows)
    sheet = Image.new("RGB", (LABEL_WIDTH + cols * (thumb_width + gap), len(rows) * (th + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for r, (name, thumbs) in enumerate(rows):
        y = gap + r * (th + gap)
        draw.text((8, y + th // 2 - 8), name, fill="black", font=font)
        for c, t in enumerate(thumbs):
            sheet.paste(t, (LABEL_WIDTH + c * (thumb_width + gap), y))
    return sheet


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_contact_sheet(
    path: Path, per_class: int, seed: int, difficulty: float = 0.5, max_bytes: int = MAX_BYTES
) -> Path:
    """Write the sheet as PNG, dropping colour bit depth only as far as needed to fit ``max_bytes``."""
    sheet = contact_sheet(per_class, seed, difficulty)
    data = _png_bytes(sheet)
    for bits in (7, 6, 5, 4):
        if len(data) <= max_bytes:
            break
        data = _png_bytes(ImageOps.posterize(sheet, bits))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
