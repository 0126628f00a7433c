"""The window mode of ``dl09 detect`` for real, on a virtual display (Xvfb)."""

import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("Xvfb", "xdotool", "xwininfo")),
    reason="needs Xvfb, xdotool and xwininfo (Debian packages xvfb, xdotool, x11-utils; .ci/run installs them)",
)


@pytest.fixture
def display():
    number = 90 + os.getpid() % 100
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if server.poll() is not None:
        pytest.fail(f"Xvfb :{number} did not start")
    yield f":{number}"
    server.terminate()
    server.wait(timeout=10)


def wait_for_window(env, title, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["xdotool", "search", "--name", title], capture_output=True, text=True, env=env)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.split()[0]
        time.sleep(0.5)
    raise AssertionError(f"No window named {title!r} appeared within {timeout} s")


def screenshot_and_quit(run_dir, image_path, shot_path, display, extra=()):
    """Open ``dl09 detect`` on an image in a window, grab the screen, press q; return the exit status."""
    from PIL import ImageGrab

    env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dl09_keras.cli", "detect", run_dir, "--source", image_path, *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        window = wait_for_window(env, "dl09 detect")
        # The window exists before its first frame is painted: grab until the screen shows more than one color.
        deadline = time.monotonic() + 60
        while True:
            time.sleep(1.0)
            shot = ImageGrab.grab(xdisplay=display)
            if len(shot.getcolors(maxcolors=1 << 16) or range(2)) > 1 or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        ImageGrab.grab(xdisplay=display).save(shot_path)
        subprocess.run(["xdotool", "windowactivate", "--sync", window], env=env, check=False, timeout=10)
        subprocess.run(["xdotool", "key", "--window", window, "q"], env=env, check=True, timeout=10)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_window_shows_boxes_and_quits_on_q(tiny_run, tmp_path, display):
    from dl09_keras.app import class_colors

    image = np.full((240, 320, 3), 128, np.uint8)
    image_path = str(tmp_path / "gray.png")
    cv2.imwrite(image_path, image)
    shot = str(tmp_path / "screen.png")
    status, stderr = screenshot_and_quit(tiny_run, image_path, shot, display, ["--score", "0.0"])
    assert status == 0, stderr[-3000:]

    screen = cv2.imread(shot)  # BGR like the class colors
    colors = np.array(class_colors(3))
    distance = np.abs(screen[:, :, None, :].astype(int) - colors[None, None]).sum(axis=-1)
    box_pixels = int((distance.min(axis=-1) <= 3).sum())
    # A uniform gray frame has none of the class colors: every such pixel is a drawn box or label.
    assert box_pixels > 200, box_pixels
