"""Lay the official Tiny-ImageNet folder out as ``tempfast train --data imagefolder`` reads it.

    python -m experiments.tiny_imagenet data/tiny-imagenet-200 data/tiny-imagenet-folders

The archive ``tiny-imagenet-200`` holds ``train/<wnid>/images/*.JPEG`` (500 per class, 200
classes), ``val/images/*.JPEG`` with labels in ``val/val_annotations.txt`` (tab-separated:
file name, wnid, box) and an unlabelled ``test/``. The trainer expects ``DIR/train/<class>/``
and ``DIR/val/<class>/`` (files anywhere below a class folder). This writes ``DST/train/<wnid>``
as a symbolic link to the archive's class folder and ``DST/val/<wnid>/<file>`` as links to the
validation images (``--copy``: copies instead). The labelled validation set serves as the test
set. Nothing in the source folder is changed; an existing ``DST`` is refused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tempfast.errors import UsageError


def read_annotations(path: Path) -> dict[str, str]:
    """``val_annotations.txt`` -> {file name: wnid}."""
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UsageError(f"{path}:{number}: expected 'file<TAB>wnid...', got {line!r}")
        labels[fields[0]] = fields[1]
    return labels


def layout(src: str | Path, dst: str | Path, copy: bool = False) -> tuple[int, int]:
    """Write the imagefolder layout of ``src`` into ``dst``; return (classes, val images).

    Raises:
        UsageError: ``src`` is not a Tiny-ImageNet folder, ``dst`` exists, or a validation
            image names a class without a training folder.
    """
    src, dst = Path(src).resolve(), Path(dst)
    train, val_images = src / "train", src / "val" / "images"
    annotations = src / "val" / "val_annotations.txt"
    for need in (train, val_images, annotations):
        if not need.exists():
            raise UsageError(f"{need} not found; expected the tiny-imagenet-200 folder "
                             "(train/<wnid>/images/, val/images/, val/val_annotations.txt)")
    if dst.exists():
        raise UsageError(f"{dst} already exists; choose a new destination")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    labels = read_annotations(annotations)
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise UsageError(f"{annotations}: classes without training folder: "
                         f"{', '.join(unknown[:5])}")
    (dst / "train").mkdir(parents=True)
    for wnid in classes:
        if copy:
            shutil.copytree(train / wnid, dst / "train" / wnid)
        else:
            os.symlink(train / wnid, dst / "train" / wnid, target_is_directory=True)
    for wnid in classes:
        (dst / "val" / wnid).mkdir(parents=True)
    for name, wnid in sorted(labels.items()):
        source, target = val_images / name, dst / "val" / wnid / name
        if copy:
            shutil.copy2(source, target)
        else:
            os.symlink(source, target)
    return len(classes), len(labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.tiny_imagenet",
        description="Lay tiny-imagenet-200 out as DST/train/<wnid>/ and DST/val/<wnid>/ for "
                    "tempfast train --data imagefolder --data-dir DST.")
    p.add_argument("src", help="the unpacked tiny-imagenet-200 folder")
    p.add_argument("dst", help="new folder to create")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking")
    args = p.parse_args(argv)
    try:
        classes, images = layout(args.src, args.dst, args.copy)
    except UsageError as exc:
        print(f"experiments.tiny_imagenet: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {classes} classes, {images} validation images; use --data imagefolder "
          f"--data-dir {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
