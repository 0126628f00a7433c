"""tensorflow-datasets sources through tfds.testing.mock_data, and ``dl09 check-data``.

mock_data generates random examples offline: its boxes often have ymin > ymax,
and the fields of one object list can differ in length, so these are also
bad-input tests.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import AQUARIUM, BCCD, require
from dl09_keras.anchors import default_boxes
from dl09_keras.cli import main as dl09_main
from dl09_keras.data import load_dataset, sample_dataset, training_pipeline
from dl09_keras.data import tfds as tfds_module
from dl09_keras.data.check import check_data
from dl09_keras.data.sources import absolute_spec
from dl09_keras.matching import TargetEncoder

tfds = pytest.importorskip("tensorflow_datasets")

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def assert_valid_boxes(dataset):
    for sample in dataset.samples:
        assert np.all(sample.boxes >= 0.0)
        assert np.all(sample.boxes <= 1.0)
        assert np.all(sample.boxes[:, 2] > sample.boxes[:, 0])
        assert np.all(sample.boxes[:, 3] > sample.boxes[:, 1])
        assert np.all((sample.labels >= 0) & (sample.labels < dataset.num_classes))


def test_tfds_voc_reads_names_and_repairs_boxes(tmp_path):
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        dataset = load_dataset(f"tfds:voc/2007@{tmp_path}", "train")
    assert dataset.class_names == VOC_CLASSES
    assert len(dataset) == 6
    assert dataset.num_boxes() > 0
    assert_valid_boxes(dataset)
    assert dataset.repaired.get("box with min and max swapped", 0) > 0
    assert dataset.skipped.get("objects with missing fields", 0) > 0
    assert all(os.path.dirname(s.path).startswith(str(tmp_path / "dl09_images" / "voc/2007")) for s in dataset.samples)


def test_tfds_cache_is_reused(tmp_path, monkeypatch):
    with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
        first = load_dataset(f"tfds:voc/2007@{tmp_path}", "validation")
        monkeypatch.setattr(tfds_module, "_write_split", lambda *a: pytest.fail("the cache was written again"))
        second = load_dataset(f"tfds:voc/2007@{tmp_path}", "validation")
    assert [s.path for s in first.samples] == [s.path for s in second.samples]
    for a, b in zip(first.samples, second.samples):
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_tfds_coco_crowd_boxes_are_difficult(tmp_path):
    with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path)):
        dataset = load_dataset(f"tfds:coco/2017@{tmp_path}", "train")
    assert dataset.num_classes == 80
    assert_valid_boxes(dataset)
    difficult = np.concatenate([s.difficult for s in dataset.samples])
    assert difficult.any()
    assert not difficult.all()


def test_tfds_samples_feed_the_training_pipeline(tmp_path):
    with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path)):
        dataset = load_dataset(f"tfds:voc/2007@{tmp_path}", "train")
    anchors = default_boxes([(4, 4), (2, 2)], (64, 64))
    images, targets = next(iter(training_pipeline(dataset, TargetEncoder(anchors), (64, 64), batch_size=4, seed=1)))
    assert images.shape == (4, 64, 64, 3)
    assert bool(tf.reduce_all(tf.math.is_finite(targets)))
    decoded = [element["image"].shape[-1] for element in sample_dataset(dataset)]
    assert decoded == [3] * 4


def test_tfds_not_prepared_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Prepare it once with `tfds build voc/2007 --data_dir DATA_DIR`"):
        load_dataset(f"tfds:voc/2007@{tmp_path}", "train")


def test_tfds_spec_keeps_name_and_data_dir(tmp_path):
    assert absolute_spec("tfds:voc/2007") == "tfds:voc/2007"
    assert absolute_spec(f"tfds:coco/2017@{tmp_path}") == f"tfds:coco/2017@{tmp_path}"


# dl09 check-data


def messy_yolo(root):
    """A YOLO folder with one good box, one skipped box, one clipped box and one unreadable image."""
    for split in ("train", "valid"):
        os.makedirs(os.path.join(root, split, "images"))
        os.makedirs(os.path.join(root, split, "labels"))
        Image.new("RGB", (200, 100), 90).save(os.path.join(root, split, "images", "a.jpg"))
        with open(os.path.join(root, split, "labels", "a.txt"), "w") as f:
            f.write("0 0.5 0.5 0.2 0.4\n0 0.5 0.5 0 0.2\n1 0.95 0.5 0.2 0.2\n")
        with open(os.path.join(root, split, "images", "b.jpg"), "w") as f:
            f.write("not an image")
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write("names: [fish, shark]\n")
    return root


def test_check_data_reports_every_problem_with_its_file(tmp_path):
    root = messy_yolo(str(tmp_path))
    code, report = check_data(f"yolo:{root}", suggest=False)
    assert code == 0
    assert "[train]: 1 images" in report
    assert "[valid]: 1 images" in report
    assert "skipped 1 x box with zero width or height" in report
    assert "repaired 1 x box reaching past the image, clipped" in report
    assert "skipped 1 x unreadable image" in report
    assert os.path.join(root, "train", "labels", "a.txt") + ":2" in report
    assert os.path.join(root, "valid", "images", "b.jpg") in report
    assert "OK: trainable; 4 boxes are used and 4 boxes or images are skipped" in report


def test_check_data_strict_and_untrainable_exit_1(tmp_path):
    root = messy_yolo(str(tmp_path))
    code, report = check_data(f"yolo:{root}", strict=True, suggest=False)
    assert code == 1
    assert "--strict: 4 boxes or images were skipped" in report

    for split in ("train", "valid"):
        (tmp_path / split / "labels" / "a.txt").write_text("0 0.5 0.5 0 0\n")
    code, report = check_data(f"yolo:{root}", suggest=False)
    assert code == 1
    assert "NOT TRAINABLE: no split has a single usable box" in report


def test_check_data_cli_exit_codes(tmp_path, capsys):
    root = messy_yolo(str(tmp_path))
    assert dl09_main(["check-data", f"yolo:{root}", "--split", "train", "--no-suggestion"]) == 0
    assert "box with zero width or height" in capsys.readouterr().out
    (tmp_path / "data.yaml").write_text("names: [fish\n")
    assert dl09_main(["check-data", f"yolo:{root}"]) == 2


def test_check_data_suggests_scales(tmp_path):
    code, report = check_data("shapes", ["val"], input_size=(96, 128), num_maps=4)
    assert code == 0
    assert "suggestion: train.py --scales " in report
    assert "fitted to these boxes" in report


def test_check_data_on_bccd_reports_its_defects():
    require(BCCD)
    code, report = check_data(f"voc:{BCCD}", suggest=False)
    assert code == 0
    assert "[all]: 364 images (0 without objects), 4886 boxes" in report
    assert "skipped 2 x box with zero width or height" in report
    assert "BloodImage_00338.xml object 13" in report
    assert "BloodImage_00343.xml object 4" in report


def test_check_data_on_aquarium_reports_its_defects():
    require(AQUARIUM)
    code, report = check_data(f"yolo:{AQUARIUM}", suggest=False)
    assert code == 0
    assert "noted 1 x tiny box" in report
    assert "skipped 2 x box with zero width or height" in report
    assert "OK: trainable; 4815 boxes are used and 2 boxes or images are skipped" in report


def test_bccd_pipeline_keeps_every_valid_box():
    require(BCCD)
    dataset = load_dataset(f"voc:{BCCD}", "trainval")
    boxes_seen = sum(int(element["labels"].shape[0]) for element in sample_dataset(dataset, max_side=320))
    assert len(dataset) == 292
    assert boxes_seen == dataset.num_boxes()
