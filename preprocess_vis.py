"""Preprocess a 4SP dataset into model-ready arrays: ``X_data.npy`` and ``Y_data.npz``.

Example: ``python preprocess_vis.py --data-dir data --out-dir .``
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import PreprocessConfig, add_dataclass_args, from_args, load_config_file


def parse_args(argv=None) -> tuple[PreprocessConfig, bool]:
    parser = argparse.ArgumentParser(
        description="Images + 4SP JSON annotations -> X_data.npy (uint8 model inputs) and Y_data.npz "
        "(Gaussian heatmaps, normalised coordinates, visibility, geometry).",
    )
    parser.add_argument("--config", help="YAML or JSON file of PreprocessConfig fields (flags override it).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_dataclass_args(parser, PreprocessConfig)
    args = parser.parse_args(argv)
    base = load_config_file(args.config) if args.config else {}
    return from_args(PreprocessConfig, args, base), args.quiet


def main(argv=None):
    from pipeline.annotations import AnnotationError
    from pipeline.preprocess import PreprocessError, preprocess

    try:
        cfg, quiet = parse_args(argv)
        report = preprocess(cfg, progress=not quiet)
    except (PreprocessError, AnnotationError, FileNotFoundError, ValueError) as e:
        print(f"preprocess_vis.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    views = f" ({report.renders} renders x {1 + cfg.zoom_views} views)" if cfg.zoom_views else ""
    print(f"Wrote {report.x_path} and {report.y_path}: {report.samples} samples{views}, K={report.num_keypoints}, "
          f"{report.seconds:.1f} s ({report.images_per_second:.1f} images/s, PNG decoder {report.png_decoder}).")
    print(f"Object and camera for pose refinement: {report.camera_note}")
    if report.images_without_json:
        print(f"{len(report.images_without_json)} image(s) without annotation (not used for training), "
              f"e.g. {report.images_without_json[0]}")
    if report.json_without_image:
        print(f"{len(report.json_without_image)} annotation(s) without image, e.g. {report.json_without_image[0]}")
    if report.skipped:
        print(f"Skipped {len(report.skipped)} invalid file(s):")
        for _, reason in report.skipped:
            print(f"  {reason}")
    if cfg.sanity_grid:
        print(f"Sanity grid: {cfg.sanity_grid}")
    return report


if __name__ == "__main__":
    main()
