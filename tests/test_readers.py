import os

import numpy as np
import pytest
from PIL import Image

from conftest import AQUARIUM, BCCD, require
from dl09_keras.data import generate_shapes, load_dataset, parse_spec
from dl09_keras.data.voc import read_voc
from dl09_keras.data.yolo import read_yolo


def write_image(path, width=200, height=100):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


VOC_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc(root, stem, objects, size=(200, 100)):
    write_image(os.path.join(root, "JPEGImages", f"{stem}.jpg"), *size)
    body = "".join(VOC_OBJECT.format(**{"difficult": 0, **o}) for o in objects)
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w") as f:
        f.write(f"<annotation><filename>{stem}.jpg</filename>{body}</annotation>")


@pytest.fixture
def voc_folder(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    write_voc(str(root), "a", [
        {"name": "cat", "x0": 20, "y0": 10, "x1": 120, "y1": 60},
        {"name": "dog", "x0": 50, "y0": 50, "x1": 50, "y1": 80},       # zero area: skipped
        {"name": "dog", "x0": 150, "y0": 0, "x1": 260, "y1": 100, "difficult": 1},  # clipped at 200
    ])
    write_voc(str(root), "b", [])
    os.makedirs(root / "Annotations", exist_ok=True)
    (root / "Annotations" / "c.xml").write_text("<annotation><object>")  # malformed
    (root / "Annotations" / "d.xml").write_text("<annotation></annotation>")  # no image file
    os.makedirs(root / "ImageSets" / "Main")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\nd\nmissing\n")
    return str(tmp_path / "VOCdevkit")


def test_voc_reader_converts_and_counts_defects(voc_folder):
    dataset = read_voc(voc_folder, "train")
    assert dataset.class_names == ["cat", "dog"]
    assert len(dataset) == 2
    first = dataset.samples[0]
    np.testing.assert_allclose(first.boxes, [[0.1, 0.1, 0.6, 0.6], [0.0, 0.75, 1.0, 1.0]])
    np.testing.assert_array_equal(first.labels, [0, 1])
    np.testing.assert_array_equal(first.difficult, [False, True])
    assert len(dataset.samples[1].boxes) == 0
    assert dataset.repaired == {"box reaching past the image, clipped": 1}
    assert dataset.skipped == {
        "box with zero width or height": 1,
        "unreadable annotation file": 1,
        "annotation without image": 1,
        "image without annotation file": 1,
    }


def test_voc_reader_names_a_missing_split(voc_folder):
    with pytest.raises(FileNotFoundError, match="trainval.txt not found: choose one of"):
        read_voc(voc_folder, "trainval")


def write_yolo(root, split, stem, lines, names=("fish", "shark")):
    write_image(os.path.join(root, split, "images", f"{stem}.jpg"))
    if lines is not None:
        os.makedirs(os.path.join(root, split, "labels"), exist_ok=True)
        with open(os.path.join(root, split, "labels", f"{stem}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write(f"nc: {len(names)}\nnames: {list(names)}\n")


def test_yolo_reader_converts_and_counts_defects(tmp_path):
    root = str(tmp_path)
    write_yolo(root, "train", "a", ["0 0.5 0.5 0.2 0.4", "1 0.1 0.1 0 0", "oops", "", "1 0.95 0.5 0.2 0.2"])
    write_yolo(root, "train", "b", None)  # no label file: background
    write_yolo(root, "train", "c", [])
    dataset = read_yolo(root, "train")
    assert dataset.class_names == ["fish", "shark"]
    assert len(dataset) == 3
    np.testing.assert_allclose(dataset.samples[0].boxes, [[0.3, 0.4, 0.7, 0.6], [0.4, 0.85, 0.6, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(dataset.samples[0].labels, [0, 1])
    assert len(dataset.samples[1].boxes) == 0
    assert dataset.skipped == {"box with zero width or height": 1, "malformed label line": 1}
    assert dataset.repaired == {"box reaching past the image, clipped": 1}


def test_dataset_spec_errors_name_the_spec():
    with pytest.raises(ValueError, match="Invalid dataset spec 'pascal:x'"):
        parse_spec("pascal:x")
    with pytest.raises(ValueError, match="Invalid dataset spec 'voc'"):
        parse_spec("voc")


def test_shapes_are_deterministic_and_splits_differ():
    a = generate_shapes("train", num_images=5)
    b = generate_shapes("train", num_images=5)
    c = generate_shapes("val", num_images=5)
    for x, y in zip(a.samples, b.samples):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert not np.array_equal(a.samples[0].image, c.samples[0].image)
    boxes = np.concatenate([s.boxes for s in generate_shapes("train", num_images=50).samples])
    assert boxes.min() >= 0
    assert boxes.max() <= 1
    assert np.all(boxes[:, 2] > boxes[:, 0])
    assert np.all(boxes[:, 3] > boxes[:, 1])


def test_bccd_splits_and_its_two_zero_area_boxes():
    require(BCCD)
    trainval = load_dataset(f"voc:{BCCD}", "trainval")
    test = load_dataset(f"voc:{BCCD}", "test")
    assert (len(trainval), len(test)) == (292, 72)
    assert trainval.class_names == ["Platelets", "RBC", "WBC"]
    assert trainval.skipped == {"box with zero width or height": 2}
    assert trainval.num_boxes() + test.num_boxes() == 4888 - 2


def test_aquarium_splits_and_classes():
    require(AQUARIUM)
    train = load_dataset(f"yolo:{AQUARIUM}", "train")
    test = load_dataset(f"yolo:{AQUARIUM}", "test")
    assert (len(train), len(test)) == (448, 63)
    assert train.class_names[:3] == ["fish", "jellyfish", "penguin"]
    assert test.skipped == {"box with zero width or height": 2}
