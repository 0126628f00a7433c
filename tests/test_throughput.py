"""The live loop's frame reader and the operation count of `dl09 throughput`."""

import threading

import numpy as np
import pytest

from dl09_keras.app import prefetch_frames


def test_prefetch_keeps_order_and_ends():
    frames = ((f"frame{i}", np.full((2, 2, 3), i, np.uint8)) for i in range(7))
    names = [name for name, _ in prefetch_frames(frames, depth=2)]
    assert names == [f"frame{i}" for i in range(7)]


def test_prefetch_prepares_each_frame_in_the_reader():
    frames = ((f"frame{i}", np.full((2, 2, 3), i, np.uint8)) for i in range(3))
    items = list(prefetch_frames(frames, prepare=lambda frame: int(frame.sum())))
    assert [(name, prepared) for name, _, prepared in items] == [("frame0", 0), ("frame1", 12), ("frame2", 24)]


def test_prefetch_raises_the_reader_error_at_its_frame():
    def frames():
        yield "a", None
        yield "b", None
        raise OSError("camera unplugged")

    seen = []
    with pytest.raises(OSError, match="camera unplugged"):
        for name, _ in prefetch_frames(frames()):
            seen.append(name)
    assert seen == ["a", "b"]


def test_prefetch_early_close_stops_reader():
    closed = threading.Event()

    def endless():
        try:
            index = 0
            while True:
                yield index, None
                index += 1
        finally:
            closed.set()

    reader = prefetch_frames(endless(), depth=3)
    assert [next(reader)[0] for _ in range(4)] == [0, 1, 2, 3]
    reader.close()
    assert closed.wait(timeout=5), "the source generator was not closed"
    assert not any(t.name == "frame-reader" and t.is_alive() for t in threading.enumerate())


def test_prefetch_rejects_depth_zero():
    with pytest.raises(ValueError, match="prefetch depth 0"):
        next(prefetch_frames(iter([]), depth=0))


def test_forward_flops_match_the_hand_count():
    import keras

    from dl09_keras.throughput import forward_flops

    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    outputs = keras.layers.Dense(5, use_bias=False)(keras.layers.Flatten()(features))
    model = keras.Model(inputs, outputs)
    # Conv: 8 x 8 outputs x 16 filters x (3 x 3 x 3) multiply-adds; Dense: 1024 x 5; 2 operations each.
    expected = 2 * (8 * 8 * 16 * 27) + 2 * (8 * 8 * 16 * 5)
    assert forward_flops(lambda x: model(x, training=False), (1, 8, 8, 3)) == expected
    assert forward_flops(lambda x: model(x, training=False), (4, 8, 8, 3)) == 4 * expected


def test_matmul_peak_rejects_a_tiny_matrix():
    from dl09_keras.throughput import matmul_gflops

    with pytest.raises(ValueError, match="--matmul-size 8"):
        matmul_gflops(8)
