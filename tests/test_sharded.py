"""jp.save_sharded / jp.load_sharded: orbax checkpoints restored straight into a target sharding.

The multi-device half runs in a subprocess with 8 forced CPU devices (tests/sharded_worker.py),
so the flag never leaks into the rest of the suite; the rest runs here on one device.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jparam as jp

ocp = pytest.importorskip("orbax.checkpoint")
HERE = Path(__file__).parent


class Net(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter
    steps: jp.Buffer

    def __init__(self, n=8, dtype=jnp.float32):
        self.weight = jp.Parameter(jnp.arange(n * 4, dtype=dtype).reshape(n, 4))
        self.bias = jp.Parameter(jnp.ones(n, dtype))
        self.steps = jp.Buffer(jnp.array(7, jnp.int32))


def test_missing_orbax_gives_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(ImportError, match="pip install orbax-checkpoint"):
        jp.save_sharded(tmp_path / "c", Net())
    with pytest.raises(ImportError, match=r"jparam\[orbax\]"):
        jp.load_sharded(tmp_path / "c", Net())


def test_multi_device_save_and_restore_into_other_shardings(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr}"
    assert '"write_shapes"' in proc.stdout


def test_round_trip_on_one_device(tmp_path):
    net = Net().replace(bias=jp.Parameter(jnp.arange(8, dtype=jnp.bfloat16), trainable=False))
    info = jp.save_sharded(tmp_path / "c", net)
    assert info.path == tmp_path / "c" and info.bytes == 8 * 4 * 4 + 8 * 2 + 4
    like = Net().replace(bias=jp.Parameter(jnp.zeros(8, jnp.bfloat16)))
    out = jp.load_sharded(tmp_path / "c", like)
    for name, value in net.state_dict().items():
        got = out.state_dict()[name]
        assert got.dtype == value.dtype and got.sharding == value.sharding, name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(value))
    assert out.bias.trainable  # like's metadata, the file's values
    assert not (tmp_path / "c.orbax-checkpoint-tmp").exists()


def test_relative_path_and_plain_orbax_can_read_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jp.save_sharded("rel", Net())
    plain = ocp.StandardCheckpointer().restore(tmp_path / "rel")
    assert sorted(plain) == ["bias", "steps", "weight"]
    np.testing.assert_array_equal(np.asarray(plain["weight"]), np.asarray(Net().weight))


def test_abstract_like_with_a_single_sharding(tmp_path):
    jp.save_sharded(tmp_path / "c", Net())
    abstract = jax.eval_shape(Net)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out = jp.load_sharded(tmp_path / "c", abstract, device)
    assert all(v.sharding == device for v in out.state_dict().values())
    np.testing.assert_array_equal(np.asarray(out.weight), np.asarray(Net().weight))


def test_abstract_like_without_sharding_names_every_array(tmp_path):
    jp.save_sharded(tmp_path / "c", Net())
    with pytest.raises(jp.StateDictError, match="3 sharding error") as e:
        jp.load_sharded(tmp_path / "c", jax.eval_shape(Net))
    assert all(f"{n}: no target sharding" in str(e.value) for n in ("weight", "bias", "steps"))


def test_sharding_dict_fills_in_and_typos_are_errors(tmp_path):
    jp.save_sharded(tmp_path / "c", Net())
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(jp.StateDictError, match=r"shardings\['wieght'\]: no such parameter"):
        jp.load_sharded(tmp_path / "c", Net(), {"wieght": device})
    out = jp.load_sharded(tmp_path / "c", Net(), {"weight": device})  # others: like's own
    assert out.weight.value.sharding == device


def test_all_problems_reported_at_once_before_reading(tmp_path):
    jp.save_sharded(tmp_path / "c", Net())

    class Other(jp.Module):
        weight: jp.Parameter
        extra: jp.Parameter
        steps: jp.Buffer

        def __init__(self):
            self.weight = jp.Parameter(jnp.zeros((8, 5)))
            self.extra = jp.Parameter(jnp.zeros(3))
            self.steps = jp.Buffer(jnp.zeros(()))  # int saved, float wanted

    with pytest.raises(jp.StateDictError) as e:
        jp.load_sharded(tmp_path / "c", Other())
    msg = str(e.value)
    assert "4 error(s)" in msg
    assert "missing key: extra" in msg
    assert "unexpected key: bias" in msg
    assert "weight: shape mismatch, expected (8, 5), got (8, 4)" in msg
    assert "steps: dtype mismatch" in msg


def test_non_strict_and_rename(tmp_path):
    jp.save_sharded(tmp_path / "c", {"module.weight": Net().weight.value})
    out, keys = jp.load_sharded(tmp_path / "c", Net(), strict=False, rename={"module.": ""})
    assert keys.missing_keys == ["bias", "steps"] and keys.unexpected_keys == []
    np.testing.assert_array_equal(np.asarray(out.weight), np.asarray(Net().weight))
    out, keys = jp.load_sharded(tmp_path / "c", Net(), strict=False)
    assert keys.unexpected_keys == ["module.weight"]


def test_cast_within_kind_like_load_state_dict(tmp_path):
    jp.save_sharded(tmp_path / "c", Net(dtype=jnp.bfloat16))
    out = jp.load_sharded(tmp_path / "c", Net())
    assert out.weight.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.weight), np.asarray(Net().weight))


def test_missing_directory_and_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sharded checkpoint at"):
        jp.load_sharded(tmp_path / "nope", Net())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    with pytest.raises(jp.CheckpointError, match="not a checkpoint"):
        jp.load_sharded(tmp_path / "junk", Net())


def test_overwrite_is_refused_unless_asked(tmp_path):
    target = tmp_path / "c"
    jp.save_sharded(target, Net())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        jp.save_sharded(target, Net(), overwrite=False)
    np.testing.assert_array_equal(np.asarray(jp.load_sharded(target, Net()).bias), np.ones(8))
    doubled = jax.tree_util.tree_map(lambda a: a * 2, Net())
    jp.save_sharded(target, doubled, overwrite=True)
    np.testing.assert_array_equal(np.asarray(jp.load_sharded(target, Net()).bias), 2 * np.ones(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no staging dirs left


def test_overwrite_never_deletes_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an orbax checkpoint"):
        jp.save_sharded(tmp_path / "mine", Net(), overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        jp.save_sharded(tmp_path / "file", Net(), overwrite=True)


def test_an_empty_directory_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    jp.save_sharded(tmp_path / "empty", Net())
    assert jp.load_sharded(tmp_path / "empty", Net()).steps.value == 7


def test_abstract_models_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="weight: abstract value"):
        jp.save_sharded(tmp_path / "c", jax.eval_shape(Net))
    assert not (tmp_path / "c").exists()


def test_optimizer_round_trip(tmp_path):
    import optax

    net = Net()
    opt = jp.Optimizer(optax.adam(1e-2), net)
    state = {
        n: jnp.full(v.shape, i + 1, v.dtype) for i, (n, v) in enumerate(opt.state_dict().items())
    }
    opt = opt.load_state_dict(state)
    info = jp.save_sharded(tmp_path / "opt", opt)
    assert info.bytes == sum(v.nbytes for v in state.values())
    fresh = jp.Optimizer(optax.adam(1e-2), Net())
    out = jp.load_sharded(tmp_path / "opt", fresh)
    assert isinstance(out, jp.Optimizer) and out.names == fresh.names
    assert list(out.state_dict()) == list(state)
    for name, value in out.state_dict().items():
        assert value.dtype == state[name].dtype, name
        np.testing.assert_array_equal(np.asarray(value), np.asarray(state[name]), err_msg=name)
    # The restored optimizer steps like the original.
    grads = jax.tree_util.tree_map(jnp.ones_like, net)
    (m1, _), (m2, _) = opt.update(net, grads), out.update(net, grads)
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, err_msg=name)


def test_plain_dict_round_trip(tmp_path):
    arrays = {"a": jnp.arange(3.0), "b.c": jnp.ones((2, 2), jnp.int32)}
    jp.save_sharded(tmp_path / "d", arrays)
    out = jp.load_sharded(tmp_path / "d", {"a": jnp.zeros(3), "b.c": jnp.zeros((2, 2), jnp.int32)})
    assert isinstance(out, dict) and list(out) == ["a", "b.c"]
    for name, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(value), err_msg=name)
    with pytest.raises(jp.StateDictError, match="missing key: z"):
        jp.load_sharded(tmp_path / "d", {**arrays, "z": jnp.zeros(1)})
    out, keys = jp.load_sharded(tmp_path / "d", {"a": jnp.zeros(3)}, strict=False)
    assert list(out) == ["a"] and keys.unexpected_keys == ["b.c"]


def test_nothing_to_save_is_a_clear_error(tmp_path):
    import optax

    with pytest.raises(ValueError, match="Optimizer holds no arrays to save.*plain SGD"):
        jp.save_sharded(tmp_path / "o", jp.Optimizer(optax.sgd(0.1), Net()))
    assert not (tmp_path / "o").exists()


def test_a_swap_killed_between_its_renames_keeps_the_old_checkpoint(tmp_path):
    target = tmp_path / "c"
    jp.save_sharded(target, Net())
    # Killed after the old checkpoint was renamed aside, before the new one was renamed in;
    # the new one was complete in staging, and an earlier swap left trash.
    target.rename(tmp_path / ".c.jparam-old")
    jp.save_sharded(tmp_path / ".c.jparam-new", jax.tree_util.tree_map(lambda a: a * 5, Net()))
    (tmp_path / ".c.jparam-trash").mkdir()
    np.testing.assert_array_equal(np.asarray(jp.load_sharded(target, Net()).bias), np.ones(8))
    doubled = jax.tree_util.tree_map(lambda a: a * 2, Net())
    with pytest.raises(FileExistsError, match="overwrite=True"):  # the old one is back
        jp.save_sharded(target, doubled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # and the rest removed
    np.testing.assert_array_equal(np.asarray(jp.load_sharded(target, Net()).bias), np.ones(8))
    jp.save_sharded(target, doubled, overwrite=True)
    np.testing.assert_array_equal(np.asarray(jp.load_sharded(target, Net()).bias), 2 * np.ones(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
