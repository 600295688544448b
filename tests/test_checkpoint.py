"""Training checkpoints: jp.save_checkpoint / jp.load_checkpoint / jp.latest_step."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xxhash

import jparam as jp
import jparam.checkpoint as checkpoint_module
from jparam import nn, tempfiles

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().with_name("resume_script.py")


def assert_trees_bitwise_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


class Net(jp.Module):
    fc: nn.Linear
    bn: nn.BatchNorm1d
    head: nn.Linear

    def __init__(self, seed=0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.fc = nn.Linear(4, 6, key=k1)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2, key=k2).freeze()  # frozen: no optimizer state

    def __call__(self, x):
        return self.head(jax.nn.relu(self.bn(self.fc(x))))


def loss_fn(model, x):
    y, model = nn.stateful_call(model, x)
    return jnp.mean(y**2), model


@jax.jit
def train_step(model, opt, x):
    (_, model), grads = jp.value_and_grad(loss_fn, has_aux=True)(model, x)
    return opt.update(model, grads)


def trained(seed=0, steps=2):
    """A model and an Adam optimizer with non-trivial state (moments, count, BN statistics)."""
    model = Net(seed)
    opt = jp.Optimizer(optax.adam(1e-2), model)
    x = jax.random.normal(jax.random.key(seed + 100), (8, 4))
    for _ in range(steps):
        model, opt = train_step(model, opt, x)
    return model, opt


def entries(directory):
    return sorted(p.name for p in Path(directory).iterdir())


# -- round trip -----------------------------------------------------------------------------------


def test_checkpoint_round_trips_model_optimizer_key_and_extras(tmp_path):
    model, opt = trained()
    key = jax.random.key(0)
    legacy_key = jax.random.PRNGKey(5)  # a raw uint32 array stays a raw array
    perm = np.random.default_rng(0).permutation(10)
    extras = {"epoch": 3, "lr": 1e-3, "name": "run-a", "tags": ["a", "b"], "cfg": {"depth": 2}}
    path = jp.save_checkpoint(
        tmp_path, 7, model=model, opt=opt, key=key, legacy_key=legacy_key, perm=perm, **extras
    )
    assert path == tmp_path / "step_000000007"
    assert entries(tmp_path) == ["step_000000007"]
    assert entries(path) == [
        "extra.json",
        "extra.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
    ]
    # The model file is a plain state_dict file (PyTorch-readable names).
    assert list(jp.load_file(path / "model.safetensors")[0]) == sorted(model.state_dict())

    fresh = Net(seed=1)
    ckpt = jp.load_checkpoint(tmp_path, model=fresh, opt=jp.Optimizer(optax.adam(1e-2), fresh))
    assert set(ckpt) == {"step", "model", "opt", "key", "legacy_key", "perm", *extras}
    assert ckpt["step"] == 7
    assert_trees_bitwise_equal(ckpt["model"], model)
    assert isinstance(ckpt["opt"], jp.Optimizer)
    assert ckpt["opt"].names == opt.names == ("fc.weight", "fc.bias", "bn.weight", "bn.bias")
    assert_trees_bitwise_equal(ckpt["opt"].state, opt.state)
    assert jax.dtypes.issubdtype(ckpt["key"].dtype, jax.dtypes.prng_key)
    assert_trees_bitwise_equal(jax.random.key_data(ckpt["key"]), jax.random.key_data(key))
    assert ckpt["legacy_key"].dtype == jnp.uint32
    np.testing.assert_array_equal(ckpt["legacy_key"], legacy_key)
    np.testing.assert_array_equal(ckpt["perm"], perm)
    for name, value in extras.items():
        assert ckpt[name] == value, name
    # The restored optimizer continues exactly like the original.
    x = jax.random.normal(jax.random.key(9), (8, 4))
    (m1, o1), (m2, o2) = train_step(ckpt["model"], ckpt["opt"], x), train_step(model, opt, x)
    assert_trees_bitwise_equal(m1, m2)
    chex.assert_trees_all_equal(o1.state, o2.state)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_typed_keys_keep_their_implementation(tmp_path, impl):
    key = jax.random.split(jax.random.key(3, impl=impl), 4)  # a batch of keys, too
    jp.save_checkpoint(tmp_path, 0, model=Net(), key=key)
    got = jp.load_checkpoint(tmp_path, model=Net())["key"]
    assert got.shape == key.shape
    assert str(jax.random.key_impl(got)) == str(jax.random.key_impl(key))
    np.testing.assert_array_equal(jax.random.normal(got[2], (5,)), jax.random.normal(key[2], (5,)))


def test_without_optimizer_or_extras(tmp_path):
    model, _ = trained()
    jp.save_checkpoint(tmp_path, 1, model=model)
    assert entries(tmp_path / "step_000000001") == ["extra.json", "model.safetensors"]
    ckpt = jp.load_checkpoint(tmp_path, model=Net(seed=4))
    assert set(ckpt) == {"step", "model"}
    assert_trees_bitwise_equal(ckpt["model"], model)


def test_load_is_strict_about_the_model(tmp_path):
    jp.save_checkpoint(tmp_path, 1, model=Net())
    wrong = nn.Linear(4, 6, key=jax.random.key(0))
    with pytest.raises(jp.StateDictError, match="unexpected key: bn.running_mean"):
        jp.load_checkpoint(tmp_path, model=wrong)


# -- steps, keep, latest --------------------------------------------------------------------------


def test_keep_keeps_only_the_newest_steps(tmp_path):
    model = Net()
    for step in (1, 2, 3, 10, 20):
        jp.save_checkpoint(tmp_path, step, model=model, keep=2, step_seen=step)
        assert jp.latest_step(tmp_path) == step
    assert entries(tmp_path) == ["step_000000010", "step_000000020"]
    assert jp.load_checkpoint(tmp_path, model=model)["step_seen"] == 20
    assert jp.load_checkpoint(tmp_path, model=model, step=10)["step_seen"] == 10


def test_keep_none_keeps_everything(tmp_path):
    for step in range(5):
        jp.save_checkpoint(tmp_path, step, model=Net(), keep=None)
    assert entries(tmp_path) == [f"step_{s:09d}" for s in range(5)]


def test_latest_step(tmp_path):
    assert jp.latest_step(tmp_path / "does-not-exist") is None
    assert jp.latest_step(tmp_path) is None
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "step_abc").mkdir()
    (tmp_path / ".step_000000099.deadbeef.tmp").mkdir()  # a crashed writer's leftover
    assert jp.latest_step(tmp_path) is None
    jp.save_checkpoint(tmp_path, 9, model=Net(), keep=None)
    jp.save_checkpoint(tmp_path, 100, model=Net(), keep=None)
    jp.save_checkpoint(tmp_path, 11, model=Net(), keep=None)
    assert jp.latest_step(tmp_path) == 100
    assert jp.latest_step(str(tmp_path)) == 100


def test_missing_step_lists_saved_steps(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        jp.load_checkpoint(tmp_path, model=Net())
    for step in (4, 5):
        jp.save_checkpoint(tmp_path, step, model=Net())
    with pytest.raises(FileNotFoundError, match=r"no step 3 .*saved: \[4, 5\]"):
        jp.load_checkpoint(tmp_path, model=Net(), step=3)


def test_saving_a_step_again_replaces_it(tmp_path):
    jp.save_checkpoint(tmp_path, 5, model=Net(seed=0), version=1)
    jp.save_checkpoint(tmp_path, 5, model=Net(seed=1), version=2)
    ckpt = jp.load_checkpoint(tmp_path, model=Net())
    assert ckpt["version"] == 2
    assert_trees_bitwise_equal(ckpt["model"], Net(seed=1))
    assert entries(tmp_path) == ["step_000000005"]


def dead_pid() -> int:
    """The id of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(directory, target, kind, pid=None, host=None):
    """The name a save by process ``pid`` (a dead one by default) gives its temporary."""
    pid = dead_pid() if pid is None else pid
    return Path(directory) / f".{target}.jp-{host or tempfiles.HOST}-{pid}-{0:012x}.{kind}"


def test_a_step_moved_aside_by_a_killed_replacement_is_still_the_step(tmp_path):
    # Killed between moving the old step 5 aside and renaming the new one in.
    jp.save_checkpoint(tmp_path, 4, model=Net(seed=4), version=4)
    jp.save_checkpoint(tmp_path, 5, model=Net(seed=0), version=1)
    aside = leftover(tmp_path, "step_000000005", "old")
    (tmp_path / "step_000000005").rename(aside)
    assert jp.latest_step(tmp_path) == 5  # not a silent fall back to step 4
    ckpt = jp.load_checkpoint(tmp_path, model=Net())
    assert ckpt["step"] == 5 and ckpt["version"] == 1
    assert_trees_bitwise_equal(ckpt["model"], Net(seed=0))
    assert jp.load_checkpoint(tmp_path, model=Net(), step=5)["version"] == 1
    # The next save, of any step, puts it back.
    jp.save_checkpoint(tmp_path, 6, model=Net(seed=6), keep=None)
    assert entries(tmp_path) == ["step_000000004", "step_000000005", "step_000000006"]
    assert jp.load_checkpoint(tmp_path, model=Net(), step=5)["version"] == 1


def test_a_stale_aside_copy_never_replaces_a_newer_step(tmp_path):
    # Killed after the new step 5 was renamed in, before the old one was deleted.
    jp.save_checkpoint(tmp_path, 5, model=Net(seed=0), version=1)
    old = leftover(tmp_path, "step_000000005", "old")
    shutil.copytree(tmp_path / "step_000000005", old)
    jp.save_checkpoint(tmp_path, 5, model=Net(seed=1), version=2)
    assert jp.load_checkpoint(tmp_path, model=Net())["version"] == 2
    assert entries(tmp_path) == ["step_000000005"]


def test_leftovers_of_dead_savers_go_and_those_of_live_ones_stay(tmp_path):
    jp.save_checkpoint(tmp_path, 1, model=Net())
    dead_tmp = leftover(tmp_path, "step_000000002", "tmp")
    live_tmp = leftover(tmp_path, "step_000000002", "tmp", pid=os.getpid())
    other_host = leftover(tmp_path, "step_000000002", "tmp", host="0123abcd")
    old_other_host = leftover(tmp_path, "step_000000003", "tmp", host="0123abcd")
    trash = leftover(tmp_path, "step_000000000", "trash", pid=os.getpid())
    live_aside = leftover(tmp_path, "step_000000001", "old", pid=os.getpid())
    for d in (dead_tmp, live_tmp, other_host, old_other_host, trash, live_aside):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 100)
    day_and_a_bit = time.time() - tempfiles.STALE_AFTER_S - 3600
    for p in (old_other_host, old_other_host / "model.safetensors"):
        os.utime(p, (day_and_a_bit, day_and_a_bit))
    (tmp_path / ".step_000000002.deadbeef.tmp").mkdir()  # not jparam's naming: never touched
    jp.save_checkpoint(tmp_path, 2, model=Net())
    assert entries(tmp_path) == sorted(
        [
            ".step_000000002.deadbeef.tmp",
            live_tmp.name,  # a save still running in this process
            other_host.name,  # another host's: its process may be alive
            live_aside.name,  # this process is replacing step 1 right now
            "step_000000001",
            "step_000000002",
        ]
    )


def test_jp_save_removes_leftovers_of_its_target_only(tmp_path):
    target = tmp_path / "model.safetensors"
    jp.save(target, Net())
    mine = leftover(tmp_path, "model.safetensors", "tmp")
    other = leftover(tmp_path, "other.safetensors", "tmp")
    live = leftover(tmp_path, "model.safetensors", "tmp", pid=os.getpid())
    for d in (mine, other, live):
        d.mkdir()
        (d / ".tmpAbC123").write_bytes(b"half a file")  # safetensors' own scratch file
    jp.save(target, Net(seed=1))
    assert entries(tmp_path) == sorted([other.name, live.name, "model.safetensors"])
    assert_trees_bitwise_equal(jp.load(target, Net()), Net(seed=1))


@pytest.mark.parametrize("step", [-1, 1.5, "3", None])
def test_invalid_step_is_refused(tmp_path, step):
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        jp.save_checkpoint(tmp_path, step, model=Net())


def test_invalid_keep_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep must be at least 1"):
        jp.save_checkpoint(tmp_path, 1, model=Net(), keep=0)


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [object(), Net(), {"a": np.ones(2)}, {1, 2}, b"bytes"], ids=type)
def test_unsupported_extra_is_refused_before_anything_is_written(tmp_path, monkeypatch, bad):
    jp.save_checkpoint(tmp_path, 1, model=Net(), epoch=1)
    before = entries(tmp_path)
    calls = []
    real_save = checkpoint_module.save
    monkeypatch.setattr(
        checkpoint_module, "save", lambda *a, **k: calls.append(a) or real_save(*a, **k)
    )
    with pytest.raises(TypeError, match="extra 'state'.*JSON values"):
        jp.save_checkpoint(tmp_path, 2, model=Net(), opt=trained()[1], epoch=2, state=bad)
    assert calls == []  # not even the model was written first
    assert entries(tmp_path) == before
    with pytest.raises(TypeError):
        jp.save_checkpoint(tmp_path / "new", 2, model=Net(), state=bad)
    assert jp.latest_step(tmp_path / "new") is None


def test_crash_while_saving_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    model, opt = trained()
    jp.save_checkpoint(tmp_path, 1, model=model, opt=opt, version=1)
    jp.save_checkpoint(tmp_path, 2, model=model, opt=opt, version=1)
    real_save = checkpoint_module.save

    def crash_on_optimizer(path, tree, **kw):
        if Path(path).name == "optimizer.safetensors":
            raise OSError(28, "No space left on device")
        return real_save(path, tree, **kw)

    monkeypatch.setattr(checkpoint_module, "save", crash_on_optimizer)
    for step in (3, 2):  # a new step, and replacing an existing one
        with pytest.raises(OSError, match="No space left"):
            jp.save_checkpoint(tmp_path, step, model=Net(seed=5), opt=opt, version=2, keep=1)
        assert entries(tmp_path) == ["step_000000001", "step_000000002"]  # nothing removed
    monkeypatch.undo()
    ckpt = jp.load_checkpoint(tmp_path, model=Net(), opt=jp.Optimizer(optax.adam(1e-2), Net()))
    assert ckpt["step"] == 2 and ckpt["version"] == 1
    assert_trees_bitwise_equal(ckpt["model"], model)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_every_file_of_a_step_is_fsynced(tmp_path, monkeypatch):
    synced = set()
    real_fsync = os.fsync

    def recording_fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    model, opt = trained()
    path = jp.save_checkpoint(tmp_path, 3, model=model, opt=opt, key=jax.random.key(0), epoch=1)
    for p in path.iterdir():
        st = p.stat()
        assert (st.st_dev, st.st_ino) in synced, f"{p.name} was never fsynced"
    assert (path.stat().st_dev, path.stat().st_ino) in synced  # its directory entries too
    assert (tmp_path.stat().st_dev, tmp_path.stat().st_ino) in synced  # and the rename


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = jp.save_checkpoint(tmp_path, 1, model=Net(), key=jax.random.key(0), epoch=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for p in path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


# -- determinism across processes -----------------------------------------------------------------


def test_resumed_training_in_a_fresh_process_is_bitwise_identical(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import resume_script as rs
    finally:
        sys.path.remove(str(SCRIPT.parent))

    model = rs.make_model()
    opt = rs.make_opt(model)
    key = jax.random.key(42)
    # Ten steps, checkpoint; a fresh process resumes and runs ten more.
    model10, opt10, key10 = rs.train(model, opt, key, 10)
    jp.save_checkpoint(tmp_path / "run", 10, model=model10, opt=opt10, key=key10, seen=320)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run"), "10", str(tmp_path / "resumed")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Twenty steps straight through, in this process.
    model20, opt20, key20 = rs.train(model, opt, key, 20)

    like = rs.make_model()
    resumed = jp.load_checkpoint(tmp_path / "resumed", model=like, opt=rs.make_opt(like))
    assert resumed["step"] == 20 and resumed["seen"] == 640
    straight = model20.state_dict()
    assert list(resumed["model"].state_dict()) == list(straight)
    for name, value in resumed["model"].state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(straight[name]), name)
    assert int(straight["1.num_batches_tracked"]) == 20  # BatchNorm statistics resumed too
    assert_trees_bitwise_equal(resumed["opt"].state, opt20.state)
    np.testing.assert_array_equal(jax.random.key_data(resumed["key"]), jax.random.key_data(key20))
    # and the run really trained: the parameters moved and differ from ten steps in.
    assert not np.array_equal(straight["0.weight"], model10.state_dict()["0.weight"])
    manifest = json.loads((tmp_path / "resumed" / "step_000000020" / "extra.json").read_text())
    assert manifest["data"]["step"] == 20 and manifest["data"]["extra"] == {"seen": 640}


def test_keep_always_keeps_the_step_just_saved(tmp_path):
    model = _keep_model()
    for step in (10, 20):
        jp.save_checkpoint(tmp_path, step, model=model, keep=2)
    path = jp.save_checkpoint(tmp_path, 5, model=model, keep=2)
    assert path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000005", "step_000000020"]


def _keep_model():
    class Small(jp.Module):
        w: jp.Parameter

    return Small(jp.Parameter(jnp.ones(2)))


# -- extra.json: checksummed, and every refusal a CheckpointError ---------------------------------


def test_every_bit_flip_of_extra_json_is_refused(tmp_path):
    jp.save_checkpoint(tmp_path, 3, model=_keep_model(), epoch=12, name="run-a", lr=1e-3)
    path = tmp_path / "step_000000003" / "extra.json"
    good = path.read_bytes()
    like = _keep_model()
    assert jp.load_checkpoint(tmp_path, model=like)["epoch"] == 12
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(bad))
        with pytest.raises(jp.CheckpointError, match="extra.json") as e:
            jp.load_checkpoint(tmp_path, model=like, step=3)
        assert str(path) in str(e.value), (bit, str(e.value))
        # A corrupted step still counts as the latest, so loading it says what is wrong
        # instead of silently falling back to an older step.
        assert jp.latest_step(tmp_path) == 3
    path.write_bytes(good)
    assert jp.load_checkpoint(tmp_path, model=like)["epoch"] == 12


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"step": 3, "extra": {}}', b"\x00" * 40, b"[]"],
    ids=["empty", "bad-json", "unchecksummed", "zeros", "list"],
)
def test_unreadable_extra_json_is_a_checkpoint_error_naming_it(tmp_path, content):
    jp.save_checkpoint(tmp_path, 3, model=_keep_model())
    path = tmp_path / "step_000000003" / "extra.json"
    path.write_bytes(content)
    with pytest.raises(jp.CheckpointError, match=f"{path}.*(corrupted|not a jparam)"):
        jp.load_checkpoint(tmp_path, model=_keep_model())


def test_checksummed_but_malformed_manifest_is_refused(tmp_path):
    jp.save_checkpoint(tmp_path, 3, model=_keep_model())
    step_dir = tmp_path / "step_000000003"
    for data, match in [
        (b'{"step":3,"files":"model.safetensors","extra":{}}', "fields of a checkpoint"),
        (b'{"step":3,"files":{"model.safetensors":1},"extra":{}', "invalid JSON"),
    ]:
        digest = xxhash.xxh3_64_hexdigest(data).encode()
        (step_dir / "extra.json").write_bytes(b'{"xxh3_64":"' + digest + b'","data":' + data + b"}")
        with pytest.raises(jp.CheckpointError, match=match):
            jp.load_checkpoint(tmp_path, model=_keep_model(), step=3)


# -- incomplete, truncated and misnamed steps -----------------------------------------------------


def test_missing_file_in_a_step(tmp_path):
    model, opt = trained()
    jp.save_checkpoint(tmp_path, 1, model=model, opt=opt, key=jax.random.key(0))
    jp.save_checkpoint(tmp_path, 2, model=model, opt=opt, key=jax.random.key(0))
    for name in ("optimizer.safetensors", "extra.safetensors", "model.safetensors"):
        shutil.copytree(tmp_path / "step_000000002", tmp_path / "copy")
        (tmp_path / "step_000000002" / name).unlink()
        # Half deleted: not a step any more for latest_step ...
        assert jp.latest_step(tmp_path) == 1
        assert jp.load_checkpoint(tmp_path, model=Net(), opt=opt)["step"] == 1
        # ... and asked for by number, an error naming the missing file.
        with pytest.raises(jp.CheckpointError, match=f"{tmp_path / 'step_000000002' / name}"):
            jp.load_checkpoint(tmp_path, model=Net(), opt=opt, step=2)
        shutil.rmtree(tmp_path / "step_000000002")
        (tmp_path / "copy").rename(tmp_path / "step_000000002")
    (tmp_path / "step_000000002" / "extra.json").unlink()  # the marker of a complete step
    assert jp.latest_step(tmp_path) == 1
    with pytest.raises(jp.CheckpointError, match="extra.json is missing.*not a complete"):
        jp.load_checkpoint(tmp_path, model=Net(), step=2)


def test_truncated_file_in_a_step(tmp_path):
    jp.save_checkpoint(tmp_path, 1, model=Net())
    path = tmp_path / "step_000000001" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(jp.CheckpointError, match=f"{path} has .* bytes.*truncated"):
        jp.load_checkpoint(tmp_path, model=Net())


def test_step_directories_with_bad_names(tmp_path):
    jp.save_checkpoint(tmp_path / "src", 5, model=Net())
    (tmp_path / "src" / "step_000000005").rename(tmp_path / "step_5")
    assert jp.latest_step(tmp_path) is None  # only jparam's own names are steps
    with pytest.raises(jp.CheckpointError, match=f"{tmp_path / 'step_5'}.*not named like"):
        jp.load_checkpoint(tmp_path, model=Net(), step=5)
    with pytest.raises(jp.CheckpointError, match=r"no complete checkpoint step.*step_5"):
        jp.load_checkpoint(tmp_path, model=Net())
    # A step renamed to another step's name is refused, not loaded as that step.
    (tmp_path / "step_5").rename(tmp_path / "step_000000007")
    with pytest.raises(jp.CheckpointError, match="belongs to step 5, not 7"):
        jp.load_checkpoint(tmp_path, model=Net())
    # Passing a step directory instead of its parent says so.
    with pytest.raises(FileNotFoundError, match="looks like a step itself: pass its parent"):
        jp.load_checkpoint(tmp_path / "step_000000007", model=Net())


def test_optimizer_asked_for_but_not_saved(tmp_path):
    model, opt = trained()
    jp.save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(jp.CheckpointError, match="no optimizer state.*without opt="):
        jp.load_checkpoint(tmp_path, model=Net(), opt=opt)


def test_keep_deletes_steps_so_that_they_stop_counting_first(tmp_path, monkeypatch):
    for step in (1, 2):
        jp.save_checkpoint(tmp_path, step, model=_keep_model(), keep=None)
    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen.append((Path(path).name, jp.latest_step(tmp_path), sorted(entries(tmp_path))))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    jp.save_checkpoint(tmp_path, 3, model=_keep_model(), keep=1)
    deleted = [s for s in seen if s[0].startswith(".step_00000000") and s[0].endswith(".trash")]
    assert {name.split(".")[1] for name, _, _ in deleted} == {"step_000000001", "step_000000002"}
    for _, latest, listing in deleted:  # while deleting: renamed away, never half a step
        assert latest == 3 and "step_000000003" in listing
    assert entries(tmp_path) == ["step_000000003"]
