"""A tiny run through every stage: train on shapes, export, evaluate, detect."""

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO, run_cli


def test_run_folder_holds_every_stage(tiny_run):
    for name in ("model.keras", "metadata.json", "history.csv", "model.onnx",
                 "model_fp32.tflite", "model_fp16.tflite", "model_int8.tflite", "parity.json"):
        assert os.path.isfile(os.path.join(tiny_run, name)), name
    assert os.path.isfile(os.path.join(tiny_run, "saved_model", "saved_model.pb"))
    assert os.listdir(os.path.join(tiny_run, "logs"))
    with open(os.path.join(tiny_run, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert float(rows[0]["loss"]) > 0
    assert "val_loss" in rows[0]
    assert float(rows[0]["epoch_seconds"]) > 0  # training time, for time-to-accuracy curves
    assert "val_map" not in rows[0]  # no --map-every: no mAP column

    metadata = json.load(open(os.path.join(tiny_run, "metadata.json")))
    assert metadata["status"] == "finished"
    assert metadata["class_names"] == ["circle", "rectangle", "triangle"]
    assert metadata["input_size"] == [96, 128]
    assert metadata["preprocessing"]["color_order"] == "RGB"
    assert metadata["anchors"]["num_default_boxes"] > 0
    assert "train" in metadata["command"]
    assert 0.0 <= metadata["evaluation"]["shapes [test] keras"]["map"] <= 1.0


def test_exported_runtimes_match_keras(tiny_run):
    report = json.load(open(os.path.join(tiny_run, "parity.json")))
    assert len(report["image_names"]) == 5
    for name in ("onnxruntime", "opencv", "tflite_fp32"):
        entry = report["runtimes"][name]
        assert entry["max_abs_diff_scores"] <= 1e-4, name
        assert entry["max_abs_diff_boxes"] <= 1e-4, name
        assert entry["same_detections_after_nms"], name
    # The reduced-precision files are reported, not required to match.
    assert {"tflite_fp16", "tflite_int8"} <= set(report["runtimes"])


def test_savedmodel_runtime_matches_keras(tiny_run):
    from dl09_keras.inference import open_runtime

    keras_runtime = open_runtime(tiny_run, "keras")
    saved = open_runtime(tiny_run, "savedmodel")
    assert saved.input_size == keras_runtime.input_size
    batch = np.random.default_rng(0).uniform(0, 255, (2, *saved.input_size, 3)).astype(np.float32)
    for ours, reference in zip(saved(batch), keras_runtime(batch)):
        np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_model_keras_reloads_in_a_fresh_process(tiny_run, tmp_path):
    image = np.random.default_rng(0).uniform(0, 255, (2, 96, 128, 3)).astype(np.float32)
    np.save(tmp_path / "input.npy", image)
    script = (
        "import sys, numpy as np, keras, dl09_keras\n"
        "model = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
        "print(type(model.loss).__name__)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, os.path.join(tiny_run, "model.keras"),
         str(tmp_path / "input.npy"), str(tmp_path / "output.npy")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("SSDLoss")

    from dl09_keras.run import RunFolder

    reloaded = np.load(tmp_path / "output.npy")
    expected = RunFolder(tiny_run).load_training_model().predict(image, verbose=0)
    np.testing.assert_allclose(reloaded, expected, atol=1e-5)


def write_video(path, frames=3, size=(96, 128)):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    writer.release()


@pytest.mark.parametrize("runtime", ["keras", "onnxruntime", "opencv", "tflite"])
def test_detect_writes_three_annotated_frames(tiny_run, tmp_path, runtime):
    video = str(tmp_path / "in.mp4")
    write_video(video)
    output = str(tmp_path / f"out_{runtime}.mp4")
    completed = run_cli("detect", tiny_run, "--source", video, "--runtime", runtime,
                        "--no-show", "--output", output, "--score", "0.0")
    assert "3 frames in" in completed.stdout
    assert "frames/s end to end" in completed.stdout
    capture = cv2.VideoCapture(output)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 3
    assert frames[0].shape == (96, 128, 3)


def test_detect_on_an_image_folder_writes_images(tiny_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((60, 80, 3), 40 * i, np.uint8))
    output = tmp_path / "annotated"
    run_cli("detect", tiny_run, "--source", str(folder), "--no-show", "--output", str(output), "--score", "0.0")
    assert sorted(os.listdir(output)) == ["img0.png", "img1.png"]


def test_camera_that_cannot_be_opened_exits_cleanly(tiny_run):
    completed = run_cli("detect", tiny_run, "--source", "57", "--no-show", check=False)
    assert completed.returncode == 2
    assert "Cannot open camera 57" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_missing_source_names_the_path(tiny_run):
    completed = run_cli("detect", tiny_run, "--source", "no/such/video.mp4", "--no-show", check=False)
    assert completed.returncode == 2
    assert "no/such/video.mp4" in completed.stderr


def test_evaluate_saves_map_into_the_run(tiny_run):
    completed = run_cli("evaluate", tiny_run, "--data", "shapes", "--split", "test", "--runtime", "onnxruntime")
    assert "mAP@0.5 =" in completed.stdout
    assert "shapes [test], 160 images, runtime onnxruntime" in completed.stdout
    results = json.load(open(os.path.join(tiny_run, "evaluation.json")))
    entry = results["shapes [test] onnxruntime"]
    assert set(entry["ap"]) == {"circle", "rectangle", "triangle"}
    assert entry["images"] == 160


def test_window_mode_without_a_display_explains_the_fix(tiny_run):
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    completed = subprocess.run([sys.executable, "-m", "dl09_keras.cli", "detect", tiny_run, "--source", "0"],
                               capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert completed.returncode == 2
    assert "No display for the window" in completed.stderr
    assert "--no-show --output" in completed.stderr


def test_bench_times_a_runtime(tiny_run, tmp_path):
    video = str(tmp_path / "in.mp4")
    write_video(video, frames=5)
    output = tmp_path / "bench.json"
    completed = run_cli("bench", tiny_run, "--runtime", "onnxruntime", "--source", video, "--frames", "5",
                        "--repeats", "5", "--output", str(output))
    assert "onnxruntime" in completed.stdout
    result = json.load(open(output))["results"][0]
    assert result["runtime"] == "onnxruntime"
    assert result["frames"] == 5
    assert result["model_ms_median"] > 0
    # The loop's steps are itemized, and the loop cannot be faster than its model calls.
    steps = result["loop_ms_per_frame"]
    assert set(steps) == {"wait_for_frame", "preprocess", "model", "postprocess", "draw"}
    assert all(value >= 0 for value in steps.values())
    assert result["prefetch"] is True
    assert 1000 / result["end_to_end_frames_per_second"] >= steps["model"]
