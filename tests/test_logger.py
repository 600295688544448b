"""jp.TensorBoardLogger: event files read back record by record, names and values checked."""

import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest

import jparam as jp
from tests.test_training import make_net

pytest.importorskip("tensorboardX")
from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir) -> list[Event]:
    """Every Event in the one event file under ``logdir``, checksums verified."""
    (path,) = pathlib.Path(logdir).glob("events.out.tfevents.*")
    data = path.read_bytes()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc(header)
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == masked_crc(
            body
        )
        events.append(Event.FromString(body))
        pos += 16 + length
    return events


def scalars(events) -> dict[tuple[int, str], float]:
    return {
        (e.step, v.tag): v.simple_value
        for e in events
        for v in e.summary.value
        if v.WhichOneof("value") == "simple_value"
    }


def histograms(events) -> dict[tuple[int, str], object]:
    return {
        (e.step, v.tag): v.histo
        for e in events
        for v in e.summary.value
        if v.WhichOneof("value") == "histo"
    }


def test_writes_stats_norms_histograms_and_scalars_exactly(tmp_path):
    net = make_net()
    grads = jp.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(net)
    with jp.TensorBoardLogger(tmp_path, every=5) as logger:
        for step in range(11):
            loss = jnp.float32(10.0 - step)
            logger.log(step, params=net, grads=grads, scalars={"train/loss": loss, "lr": 0.5})
    events = read_events(tmp_path)
    got = scalars(events)
    assert {s for s, _ in got} == {0, 5, 10}  # every 5 steps, step 0 included
    want_stats = {"params": jp.stats(net), "grads": jp.stats(grads)}
    for step in (0, 5, 10):
        assert got[step, "train/loss"] == 10.0 - step and got[step, "lr"] == 0.5
        assert got[step, "global_norm/params"] == np.float32(jp.global_norm(net))
        assert got[step, "global_norm/grads"] == np.float32(jp.global_norm(grads))
        for prefix, table in want_stats.items():
            for name, values in table.items():
                for key in jp.monitoring.STATS:
                    assert got[step, f"{prefix}/{name}/{key}"] == np.float32(values[key])
    names = [n for n, _ in jp.named_parameters(net)]
    trainable = [n for n, p in jp.named_parameters(net) if p.trainable]
    assert len(got) == 3 * (4 + 7 * (len(names) + len(trainable)))  # nothing else was written
    hist = histograms(events)
    assert {t for s, t in hist if s == 5} == {f"params/{n}" for n in names} | {
        f"grads/{n}" for n in trainable
    }
    for name, p in jp.named_parameters(net):
        h = hist[5, f"params/{name}"]
        values = np.asarray(p.value, np.float64).reshape(-1)
        assert (h.num, h.min, h.max) == (values.size, values.min(), values.max())
        assert h.sum == pytest.approx(values.sum(), rel=1e-5, abs=1e-5)  # a float32 sum
        assert h.sum_squares == pytest.approx(values @ values, rel=1e-5)
        # 30 equal-width buckets from min to max, as numpy.histogram draws them, after an
        # empty bucket whose right edge is the minimum (TensorBoard stores right edges only)
        counts, edges = np.histogram(values, bins=30)
        assert list(h.bucket) == [0, *counts.tolist()]
        np.testing.assert_allclose(h.bucket_limit, edges, atol=1e-6 * (edges[-1] - edges[0]))


def test_histogram_buckets_exact(tmp_path):
    arrays = {"ramp": jnp.arange(10.0), "flat": jnp.zeros(4), "ints": jnp.arange(3)}
    with jp.TensorBoardLogger(tmp_path, bins=5) as logger:
        logger.log(0, params=arrays)
    hist = histograms(read_events(tmp_path))
    ramp = hist[0, "params/ramp"]  # buckets of width 1.8: [0, 1.8), [1.8, 3.6), ... [7.2, 9]
    assert list(ramp.bucket) == [0, 2, 2, 2, 2, 2]
    np.testing.assert_allclose(ramp.bucket_limit, [0, 1.8, 3.6, 5.4, 7.2, 9.0], rtol=1e-6)
    assert (ramp.min, ramp.max, ramp.num, ramp.sum, ramp.sum_squares) == (0, 9, 10, 45, 285)
    flat = hist[0, "params/flat"]  # a constant array: the range -0.5 to 0.5, as numpy has it
    assert list(flat.bucket) == [0, 0, 0, 4, 0, 0] and (flat.min, flat.max) == (0, 0)
    np.testing.assert_allclose(flat.bucket_limit, [-0.5, -0.3, -0.1, 0.1, 0.3, 0.5], atol=1e-6)
    assert list(hist[0, "params/ints"].bucket) == [0, 1, 0, 1, 0, 1]


def test_does_not_touch_arguments_between_logging_steps(tmp_path):
    class Exploding:
        def __getattr__(self, name):
            raise AssertionError(f"read .{name} on a step that is not logged")

    logger = jp.TensorBoardLogger(tmp_path, every=10)
    assert [logger.log(s, params=Exploding(), scalars=Exploding()) for s in range(1, 10)] == [
        False
    ] * 9
    assert logger.should_log(20) and not logger.should_log(21)
    with pytest.raises(AssertionError):
        logger.log(10, params=Exploding())
    logger.close()


def test_selected_stats_buffers_force_and_nonfinite_histograms(tmp_path):
    net = make_net()
    bad = {"w": jnp.array([1.0, jnp.nan, 3.0, jnp.inf]), "all_bad": jnp.full(2, jnp.nan)}
    with jp.TensorBoardLogger(tmp_path, every=100, stats=("norm", "nonfinite")) as logger:
        assert logger.log(3, params=net, force=True)
        logger.log(200, grads=bad)
        logger_b = jp.TensorBoardLogger(tmp_path / "b", include_buffers=True, histograms=False)
        logger_b.log(0, params=net)
        logger_b.close()
    got = scalars(read_events(tmp_path))
    assert {k[1].rsplit("/", 1)[-1] for k in got} == {"norm", "nonfinite", "params", "grads"}
    assert got[200, "grads/w/nonfinite"] == 2.0 and got[200, "grads/all_bad/nonfinite"] == 2.0
    hist = histograms(read_events(tmp_path))
    assert (hist[200, "grads/w"].num, hist[200, "grads/w"].max) == (2, 3.0)
    assert (200, "grads/all_bad") not in hist  # nothing finite to draw
    events_b = read_events(tmp_path / "b")
    buffers = {n for n, _ in jp.named_buffers(net)}
    assert buffers and all(
        any(t == f"params/{n}/norm" for _, t in scalars(events_b)) for n in buffers
    )
    assert not histograms(events_b)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        jp.TensorBoardLogger(tmp_path, every=0)
    with pytest.raises(ValueError, match=r"unknown statistics \['median'\]"):
        jp.TensorBoardLogger(tmp_path, stats=("norm", "median"))
    with pytest.raises(ValueError, match="bins must be a positive int, got 0"):
        jp.TensorBoardLogger(tmp_path, bins=0)
    with pytest.raises(TypeError, match="sequence of names"):
        jp.TensorBoardLogger(tmp_path, stats="norm")
    with jp.TensorBoardLogger(tmp_path) as logger:
        with pytest.raises(ValueError, match=r"scalar 'loss' must be a single number.*\(3,\)"):
            logger.log(0, scalars={"loss": jnp.ones(3)})
        assert repr(logger).startswith("TensorBoardLogger(") and "every=100" in repr(logger)
