"""Bad boxes and annotation files: each kind gets a defined, counted outcome.

Every test writes its own small dataset. Boxes are checked in the library's
convention, normalized [ymin, xmin, ymax, xmax].
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dl09_keras.data import load_dataset, sample_dataset
from dl09_keras.data.coco import read_coco
from dl09_keras.data.voc import read_voc
from dl09_keras.data.yolo import read_yolo


def write_image(path, width=200, height=100, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, (width, height), 80).save(path)


def write_voc(root, stem, objects_xml, size=(200, 100), size_element="", image=True):
    """Write one VOC annotation with raw ``<object>`` XML and its 200x100 image."""
    if image:
        write_image(os.path.join(root, "JPEGImages", f"{stem}.jpg"), *size)
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w", encoding="utf-8") as f:
        f.write(f"<annotation><filename>{stem}.jpg</filename>{size_element}{objects_xml}</annotation>")


def voc_object(name, x0, y0, x1, y1, difficult=0):
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def read_one_voc(tmp_path, objects_xml, class_names=("cat", "dog"), **kwargs):
    root = str(tmp_path / "voc")
    write_voc(root, "a", objects_xml, **kwargs)
    return read_voc(root, "all", class_names)


# Boxes


def test_zero_width_box_is_skipped(tmp_path):
    dataset = read_one_voc(tmp_path, voc_object("cat", 50, 10, 50, 60) + voc_object("cat", 20, 10, 120, 60))
    assert dataset.skipped == {"box with zero width or height": 1}
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.1, 0.1, 0.6, 0.6]])


def test_swapped_corners_are_repaired(tmp_path):
    dataset = read_one_voc(tmp_path, voc_object("dog", 120, 60, 20, 10))
    assert dataset.repaired == {"box with min and max swapped": 1}
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.1, 0.1, 0.6, 0.6]])
    np.testing.assert_array_equal(dataset.samples[0].labels, [1])


def test_box_past_the_image_is_clipped(tmp_path):
    dataset = read_one_voc(tmp_path, voc_object("cat", -30, 50, 250, 130) + voc_object("cat", 210, 10, 260, 60))
    assert dataset.repaired == {"box reaching past the image, clipped": 1}
    assert dataset.skipped == {"box outside the image": 1}
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.5, 0.0, 1.0, 1.0]])


def test_decimal_coordinates_are_read_as_is(tmp_path):
    dataset = read_one_voc(tmp_path, voc_object("cat", 20.5, 10.25, 120.5, 60.75))
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.1025, 0.1025, 0.6075, 0.6025]], rtol=1e-6)
    assert dataset.problems == []


def test_negative_sizes_are_skipped(tmp_path):
    root = str(tmp_path)
    write_image(os.path.join(root, "train", "images", "a.jpg"))
    os.makedirs(os.path.join(root, "train", "labels"))
    (tmp_path / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 -0.2 0.4\n0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "data.yaml").write_text("names: [fish]\n")
    dataset = read_yolo(root, "train")
    assert dataset.skipped == {"box with negative size": 1}
    assert len(dataset.samples[0].boxes) == 1


def test_unknown_class_is_skipped_in_every_format(tmp_path):
    voc = read_one_voc(tmp_path, voc_object("horse", 20, 10, 120, 60) + voc_object("cat", 20, 10, 120, 60))
    assert voc.skipped == {"box of unknown class": 1}
    assert "name='horse'" in voc.problems[0].detail

    root = str(tmp_path / "yolo")
    write_image(os.path.join(root, "train", "images", "a.jpg"))
    os.makedirs(os.path.join(root, "train", "labels"))
    with open(os.path.join(root, "train", "labels", "a.txt"), "w") as f:
        f.write("5 0.5 0.5 0.2 0.2\n1.5 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write("names: [fish, shark]\n")
    yolo = read_yolo(root, "train")
    assert yolo.skipped == {"box of unknown class": 2}
    assert yolo.problems[0].where.endswith("a.txt:1")
    np.testing.assert_array_equal(yolo.samples[0].labels, [0])


# Annotations


def test_image_without_objects_is_a_background_sample(tmp_path):
    dataset = read_one_voc(tmp_path, "")
    assert len(dataset) == 1
    assert dataset.samples[0].boxes.shape == (0, 4)
    assert dataset.problems == []


def test_only_difficult_objects_train_as_background(tmp_path):
    dataset = read_one_voc(tmp_path, voc_object("cat", 20, 10, 120, 60, difficult=1))
    np.testing.assert_array_equal(dataset.samples[0].difficult, [True])
    element = next(iter(sample_dataset(dataset)))
    assert element["boxes"].shape == (0, 4)
    assert element["labels"].shape == (0,)


def test_empty_and_missing_label_files_are_background(tmp_path):
    root = str(tmp_path)
    for stem in ("empty", "missing", "boxed"):
        write_image(os.path.join(root, "train", "images", f"{stem}.jpg"))
    os.makedirs(os.path.join(root, "train", "labels"))
    (tmp_path / "train" / "labels" / "empty.txt").write_text("")
    (tmp_path / "train" / "labels" / "boxed.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "data.yaml").write_text("names: [fish]\n")
    dataset = read_yolo(root, "train")
    counts = {os.path.basename(s.path): len(s.boxes) for s in dataset.samples}
    assert counts == {"boxed.jpg": 1, "empty.jpg": 0, "missing.jpg": 0}
    assert dataset.problems == []


def test_label_file_without_image_is_counted(tmp_path):
    root = str(tmp_path)
    write_image(os.path.join(root, "train", "images", "a.jpg"))
    os.makedirs(os.path.join(root, "train", "labels"))
    (tmp_path / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "data.yaml").write_text("names: [fish]\n")
    yolo = read_yolo(root, "train")
    assert yolo.skipped == {"label file without image": 1}
    assert yolo.problems[0].where.endswith("orphan.txt")

    voc = read_one_voc(tmp_path, voc_object("cat", 20, 10, 120, 60), image=False)
    assert voc.skipped == {"annotation without image": 1}
    assert len(voc) == 0


def test_malformed_xml_is_skipped_and_named(tmp_path):
    root = tmp_path / "voc"
    write_voc(str(root), "good", voc_object("cat", 20, 10, 120, 60))
    write_image(str(root / "JPEGImages" / "bad.jpg"))
    (root / "Annotations" / "bad.xml").write_text("<annotation><object><name>cat</name>")
    dataset = read_voc(str(root), "all")
    assert dataset.skipped == {"unreadable annotation file": 1}
    assert dataset.problems[0].where.endswith("bad.xml")
    assert len(dataset) == 1


def test_malformed_json_raises_with_file_and_line(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "_annotations.coco.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(ValueError, match=r"Invalid JSON in .*_annotations.coco.json at line 2"):
        read_coco(str(tmp_path), "train")


def test_malformed_yaml_raises_with_file(tmp_path):
    write_image(str(tmp_path / "train" / "images" / "a.jpg"))
    (tmp_path / "data.yaml").write_text("names: [fish, shark\n")
    with pytest.raises(ValueError, match=r"Invalid YAML in .*data.yaml"):
        read_yolo(str(tmp_path), "train")


def test_non_numeric_fields_are_skipped(tmp_path):
    voc = read_one_voc(tmp_path, voc_object("cat", "abc", 10, 120, 60) + voc_object("cat", 20, 10, 120, 60))
    assert voc.skipped == {"box with missing or non-numeric coordinates": 1}
    assert len(voc.samples[0].boxes) == 1

    root = str(tmp_path / "yolo")
    write_image(os.path.join(root, "train", "images", "a.jpg"))
    os.makedirs(os.path.join(root, "train", "labels"))
    with open(os.path.join(root, "train", "labels", "a.txt"), "w") as f:
        f.write("0 0.5 x 0.2 0.2\n0 0.5 0.5 nan 0.2\nfish 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write("names: [fish]\n")
    yolo = read_yolo(root, "train")
    assert yolo.skipped == {"malformed label line": 2, "box with non-numeric coordinates": 1}
    assert len(yolo.samples[0].boxes) == 1


def test_windows_line_endings_are_read(tmp_path):
    root = str(tmp_path / "yolo")
    write_image(os.path.join(root, "train", "images", "a.jpg"))
    os.makedirs(os.path.join(root, "train", "labels"))
    with open(os.path.join(root, "train", "labels", "a.txt"), "wb") as f:
        f.write(b"0 0.5 0.5 0.2 0.4\r\n0 0.25 0.25 0.1 0.1\r\n")
    with open(os.path.join(root, "data.yaml"), "wb") as f:
        f.write(b"names:\r\n  - fish\r\n")
    yolo = read_yolo(root, "train")
    assert yolo.class_names == ["fish"]
    assert len(yolo.samples[0].boxes) == 2
    assert yolo.problems == []

    voc_root = tmp_path / "voc"
    write_voc(str(voc_root), "a", voc_object("cat", 20, 10, 120, 60).replace("><", ">\r\n<"))
    os.makedirs(voc_root / "ImageSets" / "Main")
    (voc_root / "ImageSets" / "Main" / "train.txt").write_bytes(b"a\r\n")
    voc = read_voc(str(voc_root), "train")
    assert len(voc) == 1
    np.testing.assert_allclose(voc.samples[0].boxes, [[0.1, 0.1, 0.6, 0.6]])


def test_size_element_that_disagrees_is_noted(tmp_path):
    dataset = read_one_voc(
        tmp_path, voc_object("cat", 20, 10, 120, 60),
        size_element="<size><width>400</width><height>200</height><depth>3</depth></size>",
    )
    assert dataset.noted == {"size element differs from the image": 1}
    # The image is 200x100, so its own size scales the box.
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.1, 0.1, 0.6, 0.6]])


# COCO JSON


def write_coco(root, images, annotations, categories=None, split="train"):
    folder = os.path.join(root, split)
    for image in images:
        if image.pop("write", True):
            write_image(os.path.join(folder, image["file_name"]), image.get("width", 200), image.get("height", 100))
    categories = categories or [{"id": 0, "name": "cells", "supercategory": "none"},
                                {"id": 1, "name": "cat", "supercategory": "cells"},
                                {"id": 3, "name": "dog", "supercategory": "cells"}]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "_annotations.coco.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def test_coco_reader_converts_and_counts_defects(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
        {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100},       # no annotations: background
        {"id": 3, "file_name": "gone.jpg", "width": 200, "height": 100, "write": False},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 10, 100, 50]},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [150, 0, 110, 100], "iscrowd": 1},  # clipped
        {"id": 12, "image_id": 1, "category_id": 7, "bbox": [20, 10, 100, 50]},   # unknown category
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": [20, 10, -5, 50]},    # negative width
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": ["x", 10, 5, 50]},    # non-numeric
        {"id": 15, "image_id": 9, "category_id": 1, "bbox": [20, 10, 100, 50]},   # unknown image
        {"id": 16, "image_id": 3, "category_id": 1, "bbox": [20, 10, 100, 50]},   # image file missing
    ]
    write_coco(str(tmp_path), images, annotations)

    dataset = load_dataset(f"coco:{tmp_path}", "train")
    assert dataset.class_names == ["cat", "dog"]  # the placeholder supercategory is left out
    assert len(dataset) == 2
    first = dataset.samples[0]
    np.testing.assert_allclose(first.boxes, [[0.1, 0.1, 0.6, 0.6], [0.0, 0.75, 1.0, 1.0]])
    np.testing.assert_array_equal(first.labels, [0, 1])
    np.testing.assert_array_equal(first.difficult, [False, True])
    assert dataset.samples[1].boxes.shape == (0, 4)

    assert dataset.skipped == {
        "annotation of an unknown image id": 1,
        "annotation without image": 1,
        "box of unknown class": 1,
        "box with missing or non-numeric coordinates": 1,
        "box with negative size": 1,
    }
    assert dataset.repaired == {"box reaching past the image, clipped": 1}


def test_coco_standard_layout_and_single_file(tmp_path):
    os.makedirs(tmp_path / "annotations")
    write_image(str(tmp_path / "val2017" / "000001.jpg"))
    content = {"images": [{"id": 1, "file_name": "000001.jpg", "width": 200, "height": 100}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [20, 10, 100, 50]}],
               "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    dataset = load_dataset(f"coco:{tmp_path}", "val2017")
    assert dataset.class_names == ["dog"]
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.1, 0.1, 0.6, 0.6]])

    single = tmp_path / "val2017" / "labels.json"
    single.write_text(json.dumps(content))
    assert load_dataset(f"coco:{single}", "all").num_boxes() == 1


def test_coco_file_missing_its_lists_raises(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "_annotations.coco.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"the lists \['annotations', 'categories'\] are missing"):
        read_coco(str(tmp_path), "train")
