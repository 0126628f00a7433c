"""The 2-D test surfaces, their figures, and the ``dl09 optimizers`` and ``train.py --optimizer`` commands."""

import json
import logging
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import dl09_keras  # noqa: F401  (registers the optimizers)
from dl09_keras.cli import main
from dl09_keras.optimizers.surfaces import SURFACES, get_surface, run_trajectory

from conftest import run_cli

# Gradients derived by hand, to check the TensorFlow formulas that every figure relies on.
CLOSED_FORM_GRADIENTS = {
    "valley": lambda x, y: (0.1 * x, 10.0 * y),
    "plateau": lambda x, y: (np.exp(-(x ** 2 + 2 * y ** 2) / 10) * x / 5,
                             np.exp(-(x ** 2 + 2 * y ** 2) / 10) * 2 * y / 5),
    "rosenbrock": lambda x, y: (-2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)),
    "saddle": lambda x, y: (2 * x, y ** 3 - y),
}


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surface_gradient_matches_closed_form(name):
    surface = SURFACES[name]
    rng = np.random.default_rng(0)
    x = rng.uniform(*surface.x_range, 50)
    y = rng.uniform(*surface.y_range, 50)
    dx, dy = surface.gradient(x, y)
    expected_dx, expected_dy = CLOSED_FORM_GRADIENTS[name](x, y)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dy, expected_dy, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surface_minimum_is_reached_at_minimizers(name):
    surface = SURFACES[name]
    for x, y in surface.minimizers:
        assert surface.evaluate(x, y) == pytest.approx(surface.minimum, abs=1e-15)
        assert np.hypot(*surface.gradient(x, y)) == pytest.approx(0.0, abs=1e-12)


def test_momentum_trajectory_matches_numpy():
    # The recurrence v = 0.9 v - lr g, w = w + v with the closed-form gradient; lr is a power of two because
    # Keras stores it in float32.
    lr = 2.0 ** -6
    surface = SURFACES["rosenbrock"]
    trajectory = run_trajectory(surface, "dl09_momentum", 40, learning_rate=lr / 16)
    w, v = np.array(surface.start), np.zeros(2)
    expected = [w]
    for _ in range(40):
        v = 0.9 * v - lr / 16 * np.array(CLOSED_FORM_GRADIENTS["rosenbrock"](*w))
        w = w + v
        expected.append(w)
    assert trajectory.points.shape == (41, 2)
    np.testing.assert_allclose(trajectory.points, np.array(expected), rtol=1e-10)
    np.testing.assert_allclose(trajectory.losses, surface.evaluate(trajectory.points[:, 0], trajectory.points[:, 1]))


def test_default_learning_rates_lower_every_loss():
    for surface in SURFACES.values():
        for name in surface.learning_rates:
            trajectory = run_trajectory(surface, name, 100)
            assert not trajectory.diverged, (surface.name, name)
            assert trajectory.losses[-1] < trajectory.losses[0], (surface.name, name)


def test_diverging_trajectory_stops(caplog):
    # On the valley, plain gradient descent is stable only for lr < 2 / 10 across it.
    with caplog.at_level(logging.WARNING):
        trajectory = run_trajectory(get_surface("valley"), "sgd", 2000, learning_rate=1.0)
    assert trajectory.diverged
    assert len(trajectory.points) < 2001
    assert np.all(np.isfinite(trajectory.points))
    assert "sgd diverged on valley" in caplog.text


def test_unknown_surface_names_choices():
    with pytest.raises(ValueError, match=r"Unknown surface 'ridge': choose one of valley, plateau, rosenbrock, saddle"):
        get_surface("ridge")


def test_plot_command_writes_figures(tmp_path):
    status = main([
        "optimizers", "plot", "--surfaces", "saddle", "--optimizers", "dl09_momentum", "dl09_nesterov",
        "--learning-rate", "dl09_nesterov=0.02", "--steps", "30", "--output", str(tmp_path),
        "--animate", "gif", "--frames", "4",
    ])
    assert status == 0
    with Image.open(tmp_path / "optimizers_saddle.png") as image:
        assert image.size == (1300, 520)
    with Image.open(tmp_path / "optimizers_saddle.gif") as animation:
        assert animation.n_frames == 4


def test_plot_command_writes_mp4(tmp_path):
    status = main(["optimizers", "plot", "--surfaces", "valley", "--optimizers", "dl09_adam", "--steps", "10",
                   "--output", str(tmp_path), "--prefix", "demo_", "--animate", "mp4", "--frames", "3"])
    assert status == 0
    capture = cv2.VideoCapture(str(tmp_path / "demo_valley.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3


def test_plot_command_rejects_unknown_optimizer(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        status = main(["optimizers", "plot", "--surfaces", "valley", "--optimizers", "dl09_lion", "--steps", "2",
                       "--output", str(tmp_path)])
    assert status == 2
    assert "Unknown optimizer 'dl09_lion'" in caplog.text


def test_plot_command_rejects_bad_learning_rate(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["optimizers", "plot", "--learning-rate", "dl09_adam"])
    assert exit_info.value.code == 2
    assert "invalid learning rate 'dl09_adam': expected OPTIMIZER=VALUE" in capsys.readouterr().err


def test_compare_command_writes_table_and_plot(tmp_path):
    output = tmp_path / "comparison"
    completed = run_cli(
        "optimizers", "compare", "--optimizers", "dl09_nesterov", "dl09_adam:granularity=neuron",
        "--learning-rate", "dl09_nesterov=0.005", "--train-split", "val", "--val-split", "test",
        "--steps", "4", "--log-every", "2", "--batch-size", "8", "--input-size", "64", "--output", str(output),
    )
    assert "| `dl09_adam:granularity=neuron` | 0.001 |" in completed.stdout
    assert "| `dl09_nesterov` | 0.005 |" in completed.stdout

    table = (output / "comparison.md").read_text()
    assert table.count("\n| `dl09_") == 2
    report = json.loads((output / "comparison.json").read_text())
    rows = {row["optimizer"]: row for row in report["results"]}
    assert set(rows) == {"dl09_nesterov", "dl09_adam:granularity=neuron"}
    for row in rows.values():
        assert row["steps"] == [2, 4]
        assert all(np.isfinite(row["losses"]))
        assert np.isfinite(row["val_loss"])
        assert not row["diverged"]
    # Both start from the same weights and batches, so the untrained loss is the same.
    assert rows["dl09_nesterov"]["initial_loss"] == pytest.approx(rows["dl09_adam:granularity=neuron"]["initial_loss"],
                                                                  rel=1e-6)
    with Image.open(output / "losses.png") as image:
        assert image.size == (800, 500)


def test_compare_rejects_budget_not_multiple(tmp_path):
    completed = run_cli("optimizers", "compare", "--steps", "5", "--log-every", "2", "--output", str(tmp_path),
                        check=False)
    assert completed.returncode == 2
    assert "steps 5 must be a positive multiple of log_every 2" in completed.stderr


def test_train_accepts_project_optimizer(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        "train", "--data", "shapes", "--train-split", "val", "--input-size", "64", "--width", "0.25",
        "--epochs", "1", "--batch-size", "16", "--optimizer", "dl09_adagrad:granularity=neuron",
        "--learning-rate", "0.01", "--run-dir", str(run_dir), "--verbose", "0",
    )
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["training"]["optimizer"] == "dl09_adagrad:granularity=neuron"
    assert metadata["training"]["optimizer_config"]["granularity"] == "neuron"
    assert np.isfinite(metadata["training"]["final_loss"])
    assert os.path.isfile(run_dir / "model.keras")


def test_step_time_rows_per_variant(tmp_path, capsys):
    output = tmp_path / "step-time"
    assert main(["optimizers", "step-time", "--methods", "momentum", "adagrad", "--input-size", "64",
                 "--width", "0.25", "--batch-size", "2", "--rounds", "2", "--steps", "1", "--update-steps", "2",
                 "--output", str(output)]) == 0
    rows = json.load(open(output / "step_time.json"))["results"]
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("momentum", "keras"), ("momentum", "parameter"),
        ("adagrad", "keras"), ("adagrad", "parameter"), ("adagrad", "neuron"),
    ]
    for row in rows:
        assert row["update_ms"] > 0, row
        assert row["update_ms"] < row["step_ms"], row
        if row["variant"] == "keras":
            assert row["step_ratio"] == row["update_ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| adagrad | dl09, per neuron |" in table
    assert (output / "step_time.md").read_text() in table


def test_step_time_rejects_unknown_method():
    from dl09_keras.optimizers.step_time import StepTimeSettings, measure_step_times

    with pytest.raises(ValueError, match="'lion'.*choose from momentum"):
        measure_step_times(["lion"], StepTimeSettings())
    with pytest.raises(ValueError, match="rounds 0"):
        StepTimeSettings(rounds=0)
