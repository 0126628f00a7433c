"""Unusual and broken image files, and paths that leave the dataset folder.

Every test writes its own files. Decoded pixels are compared with PIL's reading
of the same file, the reference for what an annotation tool shows.
"""

import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from dl09_keras.data import sample_dataset
from dl09_keras.data import coco as coco_module
from dl09_keras.data.coco import read_coco
from dl09_keras.data.images import ImageProblem, decode_image, inspect_image
from dl09_keras.data.voc import read_voc
from dl09_keras.data.yolo import read_yolo

EXIF_ORIENTATION = 0x0112


def yolo_folder(tmp_path, files, label="0 0.5 0.5 0.5 0.5\n"):
    """A YOLO split ``train`` whose images are written by ``files`` (name -> writer(path))."""
    images = tmp_path / "train" / "images"
    labels = tmp_path / "train" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name, writer in files.items():
        writer(str(images / name))
        (labels / (os.path.splitext(name)[0] + ".txt")).write_text(label, encoding="utf-8")
    (tmp_path / "data.yaml").write_text("names: [fish]\n")
    return str(tmp_path)


def gradient(height=60, width=80, channels=3, dtype=np.uint8):
    """A smooth test image, so lossy JPEG stays close to the original."""
    y, x = np.mgrid[0:height, 0:width]
    scale = 65535 if dtype == np.uint16 else 255
    planes = [(x / width), (y / height), ((x + y) / (width + height))][:channels]
    return (np.stack(planes, -1) * scale).astype(dtype).squeeze()


def decoded(dataset):
    """Decode every sample of ``dataset`` through the training pipeline's reader."""
    return [element["image"].numpy() for element in sample_dataset(dataset)]


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_color_modes_decode_to_rgb(tmp_path, mode):
    extension = ".jpg" if mode in ("L", "CMYK") else ".png"
    rgb = Image.fromarray(gradient())
    image = rgb.convert(mode)
    folder = yolo_folder(tmp_path, {f"a{extension}": image.save})
    dataset = read_yolo(folder, "train")
    assert dataset.samples[0].info.mode == mode
    pixels = decoded(dataset)[0]
    reference = np.asarray(Image.open(dataset.samples[0].path).convert("RGB"), np.int16)
    assert pixels.shape == (60, 80, 3)
    assert pixels.dtype == np.uint8
    # JPEG decoders of TensorFlow and PIL differ by a few levels at most.
    assert np.abs(pixels.astype(np.int16) - reference).max() <= 3


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_scales_to_8_bit(tmp_path, channels):
    import cv2

    deep = gradient(channels=channels, dtype=np.uint16)
    folder = yolo_folder(tmp_path, {"deep.png": lambda path: cv2.imwrite(path, deep)})
    pixels = decoded(read_yolo(folder, "train"))[0]
    expected = np.round(deep / 257.0)
    expected = np.repeat(expected[..., None], 3, -1) if channels == 1 else expected[..., ::-1]  # cv2 wrote BGR
    assert np.abs(pixels.astype(np.float64) - expected).max() <= 1


def exif_png(path, pixels, orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_the_displayed_view(tmp_path, orientation):
    stored = gradient(40, 70)
    stored[5:15, 10:30] = (255, 0, 0)  # marks the top-left area
    path = str(tmp_path / "photo.png")
    exif_png(path, stored, orientation)

    info = inspect_image(path)
    with Image.open(path) as image:
        shown = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert (info.height, info.width) == shown.shape[:2]
    pixels = decode_image(tf.constant(path), info.orientation, info.ratio).numpy()
    np.testing.assert_array_equal(pixels, shown)


def test_exif_photo_boxes_use_rotated_view(tmp_path):
    # Stored 100 wide and 60 high; orientation 6 shows it 60 wide and 100 high.
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    exif_png(str(root / "JPEGImages" / "a.png"), gradient(60, 100), 6)
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>cat</name><bndbox><xmin>6</xmin>"
        "<ymin>50</ymin><xmax>30</xmax><ymax>100</ymax></bndbox></object></annotation>")
    dataset = read_voc(str(root), "all")
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.5, 0.1, 1.0, 0.5]])
    assert decoded(dataset)[0].shape == (100, 60, 3)
    assert dataset.problems == []


def test_truncated_corrupt_and_text_files_are_skipped(tmp_path):
    def truncated(path):
        Image.fromarray(gradient()).save(path, quality=90)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])

    def corrupt(path):
        open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + os.urandom(300))

    def text(path):
        open(path, "w").write("this is a note, not a photo\n")

    files = {"good.jpg": Image.fromarray(gradient()).save, "truncated.jpg": truncated,
             "corrupt.png": corrupt, "text.jpg": text}
    dataset = read_yolo(yolo_folder(tmp_path, files), "train")
    assert [os.path.basename(s.path) for s in dataset.samples] == ["good.jpg"]
    assert dataset.skipped == {"unreadable image": 3}
    assert sorted(os.path.basename(p.where) for p in dataset.problems) == ["corrupt.png", "text.jpg", "truncated.jpg"]
    assert len(decoded(dataset)) == 1


def test_unsupported_format_names_the_fix(tmp_path):
    path = str(tmp_path / "scan.jpg")
    Image.fromarray(gradient()).save(path, format="TIFF")
    with pytest.raises(ImageProblem, match="TIFF; convert it to JPEG or PNG"):
        inspect_image(path)


def test_very_large_jpeg_decodes_reduced(tmp_path):
    path = str(tmp_path / "large.jpg")
    Image.new("RGB", (9000, 5000), (40, 90, 160)).save(path, quality=80)
    info = inspect_image(path)
    assert (info.width, info.height, info.ratio) == (9000, 5000, 4)
    pixels = decode_image(tf.constant(path), info.orientation, info.ratio).numpy()
    assert pixels.shape == (1250, 2250, 3)
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), [40, 90, 160], atol=2)


def test_decompression_bomb_is_skipped(tmp_path):
    # A valid PNG header that claims 20000 x 20000 pixels, with almost no data.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    dataset = read_yolo(yolo_folder(tmp_path, {"huge.png": lambda p: open(p, "wb").write(data)}), "train")
    assert dataset.skipped == {"image too large": 1}
    assert len(dataset) == 0


def test_non_ascii_file_names_are_read(tmp_path):
    names = ["рыба.jpg", "poisson_é.png", "魚.jpg"]
    dataset = read_yolo(yolo_folder(tmp_path, {n: Image.fromarray(gradient()).save for n in names}), "train")
    assert sorted(os.path.basename(s.path) for s in dataset.samples) == sorted(names)
    assert dataset.num_boxes() == 3
    assert [p.shape for p in decoded(dataset)] == [(60, 80, 3)] * 3


# Paths outside the dataset root


def test_voc_filename_outside_the_root_is_never_followed(tmp_path):
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (50, 50)).save(outside)
    root = tmp_path / "data" / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    Image.new("RGB", (200, 100)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>../../../secret.jpg</filename><object><name>cat</name><bndbox><xmin>20</xmin>"
        "<ymin>10</ymin><xmax>120</xmax><ymax>60</ymax></bndbox></object></annotation>")
    (root / "Annotations" / "b.xml").write_text("<annotation><filename>/etc/hostname</filename></annotation>")
    dataset = read_voc(str(root), "all")
    assert [os.path.basename(s.path) for s in dataset.samples] == ["a.jpg"]
    assert dataset.repaired == {"file name outside the image folder ignored": 2}
    assert dataset.skipped == {"annotation without image": 1}


def test_coco_outside_path_never_read(tmp_path, monkeypatch):
    import json

    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (50, 50)).save(outside)
    split = tmp_path / "data" / "train"
    split.mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(split / "a.jpg")
    os.symlink(outside, split / "link.jpg")
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "../../secret.jpg"},
              {"id": 3, "file_name": str(outside)}, {"id": 4, "file_name": "link.jpg"}]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10]} for i in range(1, 5)]
    (split / "_annotations.coco.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}))

    opened = []
    real_inspect = coco_module.inspect_image
    monkeypatch.setattr(coco_module, "inspect_image", lambda path: opened.append(path) or real_inspect(path))
    dataset = read_coco(str(tmp_path / "data"), "train")
    assert [os.path.basename(s.path) for s in dataset.samples] == ["a.jpg"]
    assert dataset.skipped == {"image path outside the dataset folder": 3}
    assert opened == [str(split / "a.jpg")]


def test_yolo_image_link_outside_the_root_is_skipped(tmp_path):
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (50, 50)).save(outside)
    root = tmp_path / "data"
    folder = yolo_folder(root, {"a.jpg": Image.fromarray(gradient()).save})
    os.symlink(outside, root / "train" / "images" / "b.jpg")
    dataset = read_yolo(folder, "train")
    assert [os.path.basename(s.path) for s in dataset.samples] == ["a.jpg"]
    assert dataset.skipped == {"image outside the dataset folder": 1}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_evaluation_reads_the_view_training_sees(tmp_path, orientation):
    from dl09_keras.inference import read_image_bgr

    path = str(tmp_path / "photo.png")
    exif_png(path, gradient(40, 70), orientation)
    info = inspect_image(path)
    training_view = decode_image(tf.constant(path), info.orientation, info.ratio).numpy()
    np.testing.assert_array_equal(read_image_bgr(path)[..., ::-1], training_view)
