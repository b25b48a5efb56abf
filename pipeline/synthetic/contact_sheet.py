"""Contact sheet of a 4SP dataset: visible keypoints as green dots, non-visible as red x.

    python -m pipeline.synthetic.contact_sheet DATA_ROOT out.png [--n 12] [--cols 4] [--tile 480]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw


def draw_annotation(img: Image.Image, ann: dict, scale: float = 1.0, edges=()) -> Image.Image:
    """Draw keypoints (and optionally mesh edges) of one annotation onto a copy of img,
    whose pixel size is `scale` times the original."""
    img = img.convert("RGB").copy()
    dr = ImageDraw.Draw(img)
    pts = {}
    for rec in ann["visible_vertices"] + ann["non_visible_vertices"]:
        if "pixel_coordinates" in rec:
            pts[rec["index"]] = (rec["pixel_coordinates"][0] * scale, rec["pixel_coordinates"][1] * scale)
    for a, b in edges:
        if a in pts and b in pts:
            dr.line([pts[a], pts[b]], fill=(80, 160, 255), width=1)
    r = max(2.0, 3.0 * scale)
    for rec in ann["non_visible_vertices"]:
        if "pixel_coordinates" in rec:
            x, y = pts[rec["index"]]
            dr.line([(x - r, y - r), (x + r, y + r)], fill=(255, 40, 40), width=2)
            dr.line([(x - r, y + r), (x + r, y - r)], fill=(255, 40, 40), width=2)
    for rec in ann["visible_vertices"]:
        x, y = pts[rec["index"]]
        dr.ellipse([x - r, y - r, x + r, y + r], fill=(40, 255, 40))
    return img


def contact_sheet(root, out, n: int = 12, cols: int = 4, tile: int = 480,
                  edges: bool = False) -> Path:
    """Grid of the first n images of DATA_ROOT with keypoints drawn; written to out."""
    root = Path(root)
    jsons = sorted((root / "JSON_Data_REF").glob("*.json"))[:n]
    if not jsons:
        raise FileNotFoundError(f"{root}/JSON_Data_REF has no annotation files")
    info = json.loads((root / "Object_Information" / "mesh_information.json").read_text())
    edge_list = [tuple(e) for e in info["edge_composition"]] if edges else ()
    tiles = []
    for jp in jsons:
        ann = json.loads(jp.read_text())
        im = Image.open(root / "Rendered_Images" / f"{jp.stem}.png")
        scale = tile / im.width
        im = im.resize((tile, round(im.height * scale)), Image.BILINEAR)
        tiles.append(draw_annotation(im, ann, scale, edge_list))
    th = max(t.height for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile + (cols - 1) * 4, rows * th + (rows - 1) * 4), (60, 60, 60))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * (tile + 4), (i // cols) * (th + 4)))
    out = Path(out)
    sheet.save(out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.synthetic.contact_sheet")
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--tile", type=int, default=480)
    p.add_argument("--edges", action="store_true", help="also draw mesh edges")
    a = p.parse_args(argv)
    print(contact_sheet(a.root, a.out, a.n, a.cols, a.tile, a.edges))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
