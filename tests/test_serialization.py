"""jp.save / jp.load / jp.load_file: exact round trips, validation, crash safety, corruption,
metadata and PyTorch interop (safetensors files keyed by state_dict names)."""

import errno
import json
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jparam as jp
from jparam import nn

REPO = Path(__file__).resolve().parents[1]

DTYPES = [np.float32, np.float16, jnp.bfloat16, np.int8, np.int32, np.uint8, np.bool_]
X64_DTYPES = [np.float64, np.int64]


# -- helpers ------------------------------------------------------------------------------------


def _random_array(rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Random *bits* (NaN payloads, infinities, -0.0, subnormals included), except for bool."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    raw = rng.bytes(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _bits(x: Any) -> np.ndarray:
    a = np.asarray(x)
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_bitwise_equal(got: Any, want: Any, name: str = "") -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=name)


def assert_same_state(got_tree: Any, want_tree: Any) -> None:
    got, want = jp.state_dict(got_tree), jp.state_dict(want_tree)
    assert list(got) == list(want)
    for name in want:
        assert_bitwise_equal(got[name], want[name], name)


def zeroed(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def tmp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def header(path: Path) -> tuple[int, dict]:
    """(data start offset, header dict) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n, json.loads(raw[8 : 8 + n])


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


class Node(jp.Module):
    """A generic tree node: up to three own variables, child nodes in a list and a dict."""

    p0: Any
    p1: Any
    p2: Any
    kids: list
    table: dict

    def __init__(self, own, kids, table):
        own = list(own) + [None] * (3 - len(own))
        self.p0, self.p1, self.p2 = own
        self.kids = list(kids)
        self.table = dict(table)


def _variable(kind: str, value: np.ndarray) -> Any:
    if kind == "buffer":
        return jp.Buffer(value)
    # Only floating parameters can be trainable (as in PyTorch): integer ones stay frozen.
    return jp.Parameter(
        value, trainable=kind == "param" and jnp.issubdtype(value.dtype, jnp.inexact)
    )


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
leaf_specs = st.tuples(
    st.sampled_from(["param", "frozen", "buffer"]), st.sampled_from(DTYPES), shapes
)
node_specs = st.recursive(
    st.tuples(st.lists(leaf_specs, max_size=3), st.just([]), st.just({})),
    lambda children: st.tuples(
        st.lists(leaf_specs, max_size=3),
        st.lists(children, max_size=2),
        st.dictionaries(
            st.sampled_from(["enc", "dec", "x_1"]), st.one_of(children, leaf_specs), max_size=2
        ),
    ),
    max_leaves=5,
)


def build(spec: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec[0], str):  # a leaf spec
        kind, dtype, shape = spec
        return _variable(kind, _random_array(rng, dtype, shape))
    own, kids, table = spec
    return Node(
        [build(s, rng) for s in own],
        [build(s, rng) for s in kids],
        {k: build(s, rng) for k, s in table.items()},
    )


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter

    def __init__(self, n_in, n_out, seed=0):
        rng = np.random.default_rng(seed)
        self.weight = jp.Parameter(rng.standard_normal((n_out, n_in)).astype(np.float32))
        self.bias = jp.Parameter(rng.standard_normal(n_out).astype(np.float32))


class Norm(jp.Module):
    weight: jp.Parameter
    running_mean: jp.Buffer
    num_batches_tracked: jp.Buffer

    def __init__(self, n):
        self.weight = jp.Parameter(jnp.linspace(0.5, 1.5, n))
        self.running_mean = jp.Buffer(jnp.arange(n, dtype=jnp.float32))
        self.num_batches_tracked = jp.Buffer(jnp.array(7, jnp.int32))


class Net(jp.Module):
    fc: Linear
    norm: Norm
    head: Linear

    def __init__(self, seed=0):
        self.fc = Linear(4, 3, seed)
        self.norm = Norm(3)
        self.head = Linear(3, 2, seed + 1)


NET_KEYS = [
    "fc.weight",
    "fc.bias",
    "norm.weight",
    "norm.running_mean",
    "norm.num_batches_tracked",
    "head.weight",
    "head.bias",
]


@pytest.fixture(scope="module")
def hyp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hyp")


# -- round trips ----------------------------------------------------------------------------------


@settings(max_examples=30)
@given(spec=node_specs, seed=st.integers(0, 2**32 - 1))
def test_random_module_trees_round_trip_bitwise(hyp_dir, spec, seed):
    model = build(spec, np.random.default_rng(seed))
    path = hyp_dir / "tree.safetensors"
    info = jp.save(path, model)
    assert info.bytes == path.stat().st_size
    loaded = jp.load(path, like=zeroed(model))
    assert type(loaded) is type(model)
    assert_same_state(loaded, model)
    # The structure comes from `like`: trainable flags and variable kinds are kept.
    assert jax.tree.structure(loaded) == jax.tree.structure(model)
    assert [(n, p.trainable) for n, p in jp.named_parameters(loaded)] == [
        (n, p.trainable) for n, p in jp.named_parameters(model)
    ]
    assert not tmp_files(hyp_dir)


@settings(max_examples=30)
@given(
    arrays=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True),
        st.tuples(st.sampled_from(DTYPES), shapes),
        max_size=5,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_raw_name_array_dicts_round_trip_bitwise(hyp_dir, arrays, seed):
    rng = np.random.default_rng(seed)
    state = {name: _random_array(rng, dtype, shape) for name, (dtype, shape) in arrays.items()}
    # A mix of NumPy and JAX arrays, as a user would pass them.
    state = {k: (jnp.asarray(v) if i % 2 else v) for i, (k, v) in enumerate(state.items())}
    path = hyp_dir / "raw.safetensors"
    jp.save(path, state)
    loaded, meta = jp.load_file(path)
    assert sorted(loaded) == sorted(state)
    assert meta == {"format": "pt"}
    for name, value in state.items():
        assert isinstance(loaded[name], jax.Array)
        assert_bitwise_equal(loaded[name], value, name)


def test_a_plain_dict_of_arrays_loads_back_by_its_own_keys(tmp_path):
    # What jp.save writes from a {name: array} dict, jp.load reads into one (as into a model).
    path = tmp_path / "raw.safetensors"
    jp.save(path, {"w": np.arange(3.0, dtype=np.float32), "b": np.zeros(2, np.int32)})
    like = {"b": jnp.ones(2, jnp.int32), "w": jnp.zeros(3)}
    loaded = jp.load(path, like)
    assert list(loaded) == ["b", "w"]
    chex.assert_trees_all_equal(loaded, {"b": jnp.zeros(2, jnp.int32), "w": jnp.arange(3.0)})
    partial, keys = jp.load(path, {"w": jnp.zeros(3), "c": jnp.ones(1)}, strict=False)
    chex.assert_trees_all_equal(partial, {"w": jnp.arange(3.0), "c": jnp.ones(1)})
    assert keys.missing_keys == ["c"] and keys.unexpected_keys == ["b"]
    with pytest.raises(jp.StateDictError, match=r"w: shape mismatch, expected \(4,\)"):
        jp.load(path, {"w": jnp.zeros(4), "b": jnp.ones(2, jnp.int32)})
    with pytest.raises(jp.StateDictError, match="unexpected key: b"):
        jp.load(path, {"w": jnp.zeros(3)})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_scalars_keep_shape_and_dtype(tmp_path, dtype):
    rng = np.random.default_rng(1)
    model = Node(
        [jp.Parameter(_random_array(rng, dtype, ())), jp.Buffer(_random_array(rng, dtype, ()))],
        [],
        {"s": jp.Parameter(_random_array(rng, dtype, ()), trainable=False)},
    )
    jp.save(tmp_path / "s.safetensors", model)
    loaded = jp.load(tmp_path / "s.safetensors", like=zeroed(model))
    for name, value in jp.state_dict(loaded).items():
        assert value.shape == (), name
    assert_same_state(loaded, model)
    raw, _ = jp.load_file(tmp_path / "s.safetensors")
    assert {k: v.shape for k, v in raw.items()} == {"p0": (), "p1": (), "table.s": ()}


@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="float64/int64 need jax_enable_x64")
@pytest.mark.parametrize("dtype", X64_DTYPES, ids=lambda d: np.dtype(d).name)
def test_64_bit_dtypes_round_trip_with_x64(tmp_path, dtype):
    rng = np.random.default_rng(2)
    model = Node([jp.Parameter(_random_array(rng, dtype, (3, 2)))], [], {})
    jp.save(tmp_path / "x.safetensors", model)
    assert_same_state(jp.load(tmp_path / "x.safetensors", like=zeroed(model)), model)


def test_int64_values_that_do_not_fit_are_refused_without_x64(tmp_path):
    if jax.config.jax_enable_x64:
        pytest.skip("with x64 int64 loads as it is")
    path = tmp_path / "i64.safetensors"
    safetensors.numpy.save_file(
        {"small": np.array([1, -2, 3], np.int64), "big": np.array([2**40], np.int64)}, str(path)
    )
    with pytest.raises(ValueError, match="'big'.*int32|int32.*'big'") as e:
        jp.load_file(path)
    assert "small" not in str(e.value)
    safetensors.numpy.save_file({"small": np.array([1, -2, 3], np.int64)}, str(path))
    loaded, _ = jp.load_file(path)
    np.testing.assert_array_equal(loaded["small"], [1, -2, 3])


def test_empty_state_and_empty_arrays_round_trip(tmp_path):
    jp.save(tmp_path / "e.safetensors", {})
    assert jp.load_file(tmp_path / "e.safetensors") == ({}, {"format": "pt"})
    model = Node([jp.Parameter(jnp.zeros((0, 3))), jp.Buffer(jnp.zeros((2, 0), jnp.int8))], [], {})
    jp.save(tmp_path / "z.safetensors", model)
    assert_same_state(jp.load(tmp_path / "z.safetensors", like=model), model)


def test_tied_parameters_save_under_both_names_and_load(tmp_path):
    w = jp.Parameter(jnp.arange(6.0).reshape(2, 3))
    model = Node([w, w], [Node([w], [], {})], {})
    jp.save(tmp_path / "tied.safetensors", model)
    raw, _ = jp.load_file(tmp_path / "tied.safetensors")
    assert sorted(raw) == ["kids.0.p0", "p0", "p1"]
    loaded = jp.load(tmp_path / "tied.safetensors", like=zeroed(model))
    for name in ("p0", "p1", "kids.0.p0"):
        np.testing.assert_array_equal(jp.state_dict(loaded)[name], w.value)


def test_overwrite_replaces_and_keeps_file_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    old_umask = os.umask(0o022)
    try:
        jp.save(path, Net(seed=0))
        jp.save(path, Net(seed=5))
    finally:
        os.umask(old_umask)
    assert_same_state(jp.load(path, like=Net(seed=0)), Net(seed=5))
    # Like open(): 0o666 minus the umask, not mkstemp's owner-only 0o600.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert tmp_files(tmp_path) == []


# -- load validation ------------------------------------------------------------------------------


def test_strict_load_lists_every_problem_in_one_error(tmp_path):
    state = dict(Net(seed=3).state_dict())
    del state["fc.bias"]  # missing
    state["extra.weight"] = jnp.ones(2)  # unexpected
    state["head.weight"] = jnp.ones((3, 3))  # shape
    state["norm.num_batches_tracked"] = jnp.array(7.0)  # dtype kind (int -> float)
    jp.save(tmp_path / "bad.safetensors", state)
    with pytest.raises(jp.StateDictError) as e:
        jp.load(tmp_path / "bad.safetensors", like=Net())
    msg = str(e.value)
    assert "4 error(s)" in msg
    for fragment in (
        "missing key: fc.bias",
        "unexpected key: extra.weight",
        "head.weight: shape mismatch, expected (2, 3), got (3, 3)",
        "norm.num_batches_tracked: dtype mismatch",
    ):
        assert fragment in msg, msg
    assert isinstance(e.value, ValueError)


def test_non_strict_loads_the_matching_subset(tmp_path):
    like, source = Net(seed=0), Net(seed=9)
    state = dict(source.state_dict())
    del state["fc.bias"], state["norm.running_mean"]
    state["aux.weight"] = jnp.ones(2)
    jp.save(tmp_path / "part.safetensors", state)
    with pytest.raises(jp.StateDictError, match="missing key: fc.bias"):
        jp.load(tmp_path / "part.safetensors", like=like)
    model, incompatible = jp.load(tmp_path / "part.safetensors", like=like, strict=False)
    assert isinstance(incompatible, jp.IncompatibleKeys)
    assert incompatible.missing_keys == ["fc.bias", "norm.running_mean"]
    assert incompatible.unexpected_keys == ["aux.weight"]
    got = model.state_dict()
    for name in NET_KEYS:
        want = like if name in incompatible.missing_keys else source
        assert_bitwise_equal(got[name], want.state_dict()[name], name)


def test_non_strict_still_refuses_shape_and_kind_mismatches(tmp_path):
    state = dict(Net().state_dict())
    state["fc.weight"] = jnp.ones((4, 3))
    state["norm.weight"] = jnp.ones(3, jnp.int32)
    jp.save(tmp_path / "bad.safetensors", state)
    with pytest.raises(jp.StateDictError) as e:
        jp.load(tmp_path / "bad.safetensors", like=Net(), strict=False)
    assert "fc.weight: shape mismatch" in str(e.value)
    assert "norm.weight: dtype mismatch" in str(e.value)


def test_same_kind_dtypes_are_cast_like_torch_copy(tmp_path):
    state = {
        k: (v.astype(jnp.float16) if v.dtype == jnp.float32 else v)
        for k, v in Net(seed=4).state_dict().items()
    }
    jp.save(tmp_path / "half.safetensors", state)
    model = jp.load(tmp_path / "half.safetensors", like=Net())
    for name, value in model.state_dict().items():
        assert value.dtype == Net().state_dict()[name].dtype
        np.testing.assert_array_equal(value, np.asarray(state[name]).astype(value.dtype))


def test_rename_prefix_for_data_parallel_files(tmp_path):
    source = Net(seed=2)
    jp.save(
        tmp_path / "ddp.safetensors", {f"module.{k}": v for k, v in source.state_dict().items()}
    )
    with pytest.raises(jp.StateDictError, match="missing key: fc.weight"):
        jp.load(tmp_path / "ddp.safetensors", like=Net())
    model = jp.load(tmp_path / "ddp.safetensors", like=Net(), rename={"module.": ""})
    assert_same_state(model, source)
    # Prefixes are tried in order and the first match wins.
    model = jp.load(
        tmp_path / "ddp.safetensors",
        like=Net(),
        rename={"module.head.": "head.", "module.": "", "module.fc.": "never."},
    )
    assert_same_state(model, source)


def test_rename_empty_prefix_loads_a_submodule_file(tmp_path):
    source = Net(seed=8)
    jp.save(tmp_path / "head.safetensors", source.head)  # "weight", "bias"
    model, incompatible = jp.load(
        tmp_path / "head.safetensors", like=Net(), strict=False, rename={"": "head."}
    )
    assert incompatible.unexpected_keys == []
    assert set(incompatible.missing_keys) == set(NET_KEYS) - {"head.weight", "head.bias"}
    assert_same_state(model.head, source.head)
    assert_same_state(model.fc, Net().fc)


def test_rename_function_can_drop_and_map_keys(tmp_path):
    source = Net(seed=6)
    state = {**source.state_dict(), "aux_head.weight": jnp.ones(3), "aux_head.bias": jnp.ones(1)}
    jp.save(tmp_path / "aux.safetensors", state)
    seen = []

    def rename(name):
        seen.append(name)
        return None if name.startswith("aux_head.") else name

    model = jp.load(tmp_path / "aux.safetensors", like=Net(), rename=rename)
    assert_same_state(model, source)
    assert sorted(seen) == sorted(state)
    with pytest.raises(ValueError, match="two keys"):
        jp.load(tmp_path / "aux.safetensors", like=Net(), rename=lambda n: "fc.weight")


# -- crash safety ---------------------------------------------------------------------------------


def _half_writing_save_file(calls):
    def fake(tensors, filename, metadata=None):
        data = safetensors.numpy.save(tensors, metadata=metadata)
        calls.append(filename)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise RuntimeError("simulated crash in the middle of the write")

    return fake


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = Net(seed=1)
    jp.save(path, old)
    before = path.read_bytes()
    calls = []
    # jparam.serialization imports save_file from safetensors.numpy inside save(), at call time.
    monkeypatch.setattr(safetensors.numpy, "save_file", _half_writing_save_file(calls))
    with pytest.raises(RuntimeError, match="simulated crash"):
        jp.save(path, Net(seed=2))
    assert len(calls) == 1 and Path(calls[0]) != path  # it wrote somewhere else
    # In a private directory next to the target (same filesystem, so the rename is atomic).
    assert Path(calls[0]).parent.parent == tmp_path
    assert path.read_bytes() == before
    assert_same_state(jp.load(path, like=zeroed(old)), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.numpy, "save_file", _half_writing_save_file([]))
    with pytest.raises(RuntimeError):
        jp.save(tmp_path / "new.safetensors", Net())
    assert list(tmp_path.iterdir()) == []


def test_full_disk_on_fsync_propagates_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = Net(seed=1)
    jp.save(path, old)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        jp.save(path, Net(seed=2))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_same_state(jp.load(path, like=zeroed(old)), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_failure_while_checksums_are_filled_in_keeps_old_file(tmp_path, monkeypatch):
    """The checksums are written into the header after the data: a failure there is a failure
    of the save, with the previous file intact."""
    path = tmp_path / "model.safetensors"
    old = Net(seed=1)
    jp.save(path, old)
    before = path.read_bytes()

    def crash(f, placeholders, sums):
        f.seek(8)
        f.write(b"{garbage")  # half-done: a header that no longer parses
        raise RuntimeError("simulated crash while filling in checksums")

    monkeypatch.setattr(jp.serialization, "_fill_placeholders", crash)
    with pytest.raises(RuntimeError, match="filling in checksums"):
        jp.save(path, Net(seed=2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_header_holds_the_checksum_of_every_tensor(tmp_path):
    path = tmp_path / "model.safetensors"
    model = Net()
    jp.save(path, model)
    _, head = header(path)
    sums = json.loads(head["__metadata__"]["jparam.xxh3_64"])
    for name, value in model.state_dict().items():
        a = np.asarray(value)
        if name.endswith("num_batches_tracked"):  # stored as PyTorch's int64
            a = a.astype(np.int64)
        h = xxhash.xxh3_64(f"{a.dtype.name}{tuple(a.shape)}".encode())
        h.update(a.tobytes())
        assert sums[name] == h.hexdigest(), name


def test_full_disk_during_write_propagates_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = Net(seed=1)
    jp.save(path, old)

    def no_space(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.numpy, "save_file", no_space)
    with pytest.raises(OSError) as e:
        jp.save(path, Net(seed=2))
    assert e.value.errno == errno.ENOSPC
    assert_same_state(jp.load(path, like=zeroed(old)), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_real_write_error_from_file_size_limit_keeps_old_file(tmp_path):
    """A real I/O error inside safetensors' writer (EFBIG via RLIMIT_FSIZE, like a full disk)."""
    path = tmp_path / "model.safetensors"
    jp.save(path, {"w": np.zeros(10, np.float32)})
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(Exception, match="(?i)too large|error 27"):
            jp.save(path, {"w": np.ones(1_000_000, np.float32)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


_WRITER = r"""
import sys
import numpy as np
import jparam as jp

class Big(jp.Module):
    w: jp.Parameter
    steps: jp.Buffer

    def __init__(self, fill, n):
        self.w = jp.Parameter(np.full((n,), fill, np.float32))
        self.steps = jp.Buffer(np.full((n // 4,), fill, np.int32))

path, n = sys.argv[1], int(sys.argv[2])
version = 1
while True:
    jp.save(path, Big(version, n), metadata={"version": str(version)})
    print(version, flush=True)
    version += 1
"""


def test_writer_killed_mid_write_leaves_a_complete_file(tmp_path):
    path = tmp_path / "big.safetensors"
    n = 40 * 2**20  # 160 MB of float32 + 40 MB of int32
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.strip() == "1", proc.stderr.read() if proc.poll() is not None else first
        complete = path.stat().st_size
        # Kill while the next version is being written: safetensors writes into its own
        # "tmpXXXX" file (sized in full up front), in jparam's private ".big...tmp" directory.
        writing = None
        deadline = time.monotonic() + 60
        while writing is None and time.monotonic() < deadline:
            # (os.walk, unlike rglob, skips a directory removed while it walks)
            for p in (Path(r) / f for r, _, files in os.walk(tmp_path) for f in files):
                try:
                    size = p.stat().st_size
                except FileNotFoundError:  # renamed into place meanwhile
                    continue
                if p != path and size > 0:
                    writing = p
                    break
            else:
                time.sleep(0.0002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert writing is not None, "never saw the next version being written"
    assert proc.returncode == -signal.SIGKILL
    assert {p.name for p in tmp_path.iterdir()} - {path.name}  # the dead writer's leftovers
    # The file at the path is a complete version: it loads, checksums pass, every value agrees.
    arrays, meta = jp.load_file(path)
    version = int(meta["version"])
    assert version >= 1
    assert path.stat().st_size == complete
    assert arrays["w"].shape == (n,) and arrays["steps"].shape == (n // 4,)
    assert bool(jnp.all(arrays["w"] == version)) and bool(jnp.all(arrays["steps"] == version))
    # A later save to the same path still works despite the dead writer's leftover temp file.
    jp.save(path, {"w": np.zeros(3, np.float32)})
    assert list(jp.load_file(path)[0]) == ["w"]


# -- corruption -----------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    jp.save(path, Net(seed=1))
    return path


def test_truncated_file_is_a_checkpoint_error(saved):
    saved.write_bytes(saved.read_bytes()[:-10])
    with pytest.raises(jp.CheckpointError, match="truncated|corrupted"):
        jp.load_file(saved)
    with pytest.raises(jp.CheckpointError, match="truncated|corrupted"):
        jp.load(saved, like=Net())


@settings(max_examples=40)
@given(frac=st.floats(0, 1, exclude_max=True))
def test_any_truncation_is_a_checkpoint_error(hyp_dir, frac):
    path = hyp_dir / "trunc.safetensors"
    jp.save(path, Net(seed=1))
    raw = path.read_bytes()
    path.write_bytes(raw[: int(frac * len(raw))])
    with pytest.raises(jp.CheckpointError):
        jp.load_file(path)


def test_flipped_data_byte_names_the_tensor(saved):
    start, head = header(saved)
    begin, end = head["head.weight"]["data_offsets"]
    flip_byte(saved, start + (begin + end) // 2)
    with pytest.raises(jp.CheckpointError, match=r"'head\.weight'.*checksum"):
        jp.load_file(saved)
    with pytest.raises(jp.CheckpointError, match=r"head\.weight"):
        jp.load(saved, like=Net())


@settings(max_examples=40)
@given(data=st.data())
def test_any_flipped_data_bit_is_caught(hyp_dir, data):
    path = hyp_dir / "flip.safetensors"
    jp.save(path, Net(seed=1))
    start, head = header(path)
    name = data.draw(st.sampled_from(NET_KEYS))
    begin, end = head[name]["data_offsets"]
    offset = data.draw(st.integers(begin, end - 1))
    flip_byte(path, start + offset, 1 << data.draw(st.integers(0, 7)))
    with pytest.raises(jp.CheckpointError, match=rf"'{name}'.*checksum"):
        jp.load_file(path)


def test_corrupted_tensor_name_in_header_is_caught(saved):
    raw = saved.read_bytes()
    i = raw.index(b'"head.bias"')
    flip_byte(saved, i + 1)  # "head.bias" -> "iead.bias": data intact, name without checksum
    with pytest.raises(jp.CheckpointError, match="header fails its checksum"):
        jp.load_file(saved)


def test_garbage_and_empty_files_are_checkpoint_errors(tmp_path):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(rng.bytes(4096))
    with pytest.raises(jp.CheckpointError, match="not a readable safetensors file"):
        jp.load_file(garbage)
    for content in (b"", b"{}", struct.pack("<Q", 10**12) + b"{}", b"PK\x03\x04" + bytes(60)):
        garbage.write_bytes(content)
        with pytest.raises(jp.CheckpointError):
            jp.load(garbage, like=Net())
    with pytest.raises(jp.CheckpointError):
        jp.load_file(tmp_path)  # a directory


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        jp.load(tmp_path / "nothing.safetensors", like=Net())
    with pytest.raises(FileNotFoundError):
        jp.load_file(tmp_path / "nothing.safetensors")


# -- metadata and SaveInfo ------------------------------------------------------------------------


def test_user_metadata_round_trips(tmp_path):
    meta = {"epoch": "3", "config": json.dumps({"lr": 1e-3, "layers": [1, 2]}), "note": "ü ✓"}
    jp.save(tmp_path / "m.safetensors", Net(), metadata=meta)
    _, got = jp.load_file(tmp_path / "m.safetensors")
    assert got == {"format": "pt", **meta}
    assert json.loads(got["config"]) == {"lr": 1e-3, "layers": [1, 2]}


@pytest.mark.parametrize("bad", [{"epoch": 3}, {"x": None}, {"x": b"bytes"}, {1: "one"}])
def test_non_string_metadata_is_a_type_error_and_writes_nothing(tmp_path, bad):
    path = tmp_path / "m.safetensors"
    jp.save(path, Net(seed=1))
    before = path.read_bytes()
    with pytest.raises(TypeError, match="strings to strings"):
        jp.save(path, Net(seed=2), metadata=bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_reserved_metadata_prefix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        jp.save(tmp_path / "m.safetensors", Net(), metadata={"jparam.xxh3_64": "{}"})
    assert not (tmp_path / "m.safetensors").exists()


def test_save_info_reports_path_and_exact_size(tmp_path):
    model = Net()
    path = tmp_path / "sub" / "dir" / "m.safetensors"  # parents are created
    info = jp.save(str(path), model, metadata={"a": "b"})
    assert isinstance(info, jp.SaveInfo)
    assert info.path == path and isinstance(info.path, Path)
    start, head = header(path)
    data_bytes = sum(np.asarray(v).nbytes for v in model.state_dict().values())
    data_bytes += 4  # norm.num_batches_tracked: int32 here, stored as PyTorch's int64
    assert info.bytes == path.stat().st_size == start + data_bytes
    assert (
        max(end for k, v in head.items() if k != "__metadata__" for end in v["data_offsets"])
        == data_bytes
    )
    assert 0 < info.seconds < 60


def test_progress_bar_can_be_forced(tmp_path, capsys):
    jp.save(tmp_path / "p.safetensors", Net(), progress=True)
    arrays, _ = jp.load_file(tmp_path / "p.safetensors", progress=True)
    assert sorted(arrays) == sorted(NET_KEYS)
    jp.save(tmp_path / "p.safetensors", Net(), progress=False)


# -- PyTorch interop ------------------------------------------------------------------------------


class ConvNet(jp.Module):
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    fc: nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, key=k1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 5 * 5, 3, key=k2)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.conv(x)))
        return self.fc(h.reshape(h.shape[0], -1))


def _torch_convnet(torch):
    class TorchConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4 * 5 * 5, 3)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            return self.fc(h.flatten(1))

    torch.manual_seed(0)
    model = TorchConvNet()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
        model.bn.num_batches_tracked.fill_(11)
    return model.eval()


def _torch_mlp(torch):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _jp_mlp(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return nn.Sequential(nn.Linear(6, 8, key=k1), nn.ReLU(), nn.Linear(8, 2, key=k2))


def test_torch_written_convnet_loads_and_matches(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tm = _torch_convnet(torch)
    st_torch.save_file(tm.state_dict(), str(tmp_path / "t.safetensors"))
    model = jp.load(tmp_path / "t.safetensors", like=ConvNet(jax.random.key(3))).eval()
    assert int(model.bn.num_batches_tracked.value) == 11
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.jit(lambda m, x: m(x))(model, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_jparam_written_convnet_loads_into_torch_and_matches(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    model = ConvNet(jax.random.key(4)).eval()
    model = jp.at(model, "bn.running_var").set(jp.Buffer(jnp.array([0.5, 1.0, 1.5, 2.0])))
    jp.save(tmp_path / "j.safetensors", model)
    tm = _torch_convnet(torch)
    tm.load_state_dict(st_torch.load_file(str(tmp_path / "j.safetensors")))  # strict
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        got = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_num_batches_tracked_is_saved_as_pytorch_int64(tmp_path):
    """JAX without x64 holds BatchNorm's counter as int32; the file holds PyTorch's int64."""
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    model = ConvNet(jax.random.key(5))
    model = jp.at(model, "bn.num_batches_tracked").set(jp.Buffer(jnp.array(11, jnp.int32)))
    jp.save(tmp_path / "j.safetensors", model)
    tensors = st_torch.load_file(str(tmp_path / "j.safetensors"))
    tm = _torch_convnet(torch)
    assert tensors["bn.num_batches_tracked"].dtype == tm.bn.num_batches_tracked.dtype
    assert tensors["bn.num_batches_tracked"].dtype == torch.int64
    assert tensors["bn.running_mean"].dtype == torch.float32  # nothing else widened
    tm.bn.num_batches_tracked.fill_(0)
    tm.load_state_dict(tensors)  # strict
    assert tm.bn.num_batches_tracked.item() == 11
    back = jp.load(tmp_path / "j.safetensors", like=ConvNet(jax.random.key(6)))
    assert back.bn.num_batches_tracked.dtype == model.bn.num_batches_tracked.dtype
    assert int(back.bn.num_batches_tracked.value) == 11


def test_load_state_dict_copies_what_it_is_given():
    """The loaded model never shares memory with the caller's arrays: an in-place change of a
    PyTorch tensor (an optimizer step) or a NumPy array after loading does not reach it."""
    torch = pytest.importorskip("torch")
    for _ in range(20):  # aligned and unaligned buffers; device_put adopts or copies late
        tm = _torch_mlp(torch)
        state = tm.state_dict()
        arrays = {k: v.numpy().copy() for k, v in state.items()}
        want = {k: v.copy() for k, v in arrays.items()}
        from_torch = _jp_mlp().load_state_dict(state)
        from_numpy = _jp_mlp().load_state_dict(arrays)
        with torch.no_grad():
            for v in state.values():
                v.add_(1.0)
        for v in arrays.values():
            v += 1.0
        for model in (from_torch, from_numpy):
            for name, value in model.state_dict().items():
                np.testing.assert_array_equal(np.asarray(value), want[name], err_msg=name)


def test_torch_sequential_round_trips_under_torch_names(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tm = _torch_mlp(torch)
    st_torch.save_file(tm.state_dict(), str(tmp_path / "t.safetensors"))
    assert list(_jp_mlp().state_dict()) == list(tm.state_dict())  # "0.weight", ...
    model = jp.load(tmp_path / "t.safetensors", like=_jp_mlp())
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-5)
    # and back: a jparam file into a fresh torch Sequential
    model = _jp_mlp(seed=7)
    jp.save(tmp_path / "j.safetensors", model)
    tm2 = _torch_mlp(torch)
    tm2.load_state_dict(st_torch.load_file(str(tmp_path / "j.safetensors")))
    with torch.no_grad():
        np.testing.assert_allclose(
            tm2(torch.from_numpy(x)).numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-5
        )


def test_bfloat16_round_trips_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tm = _torch_mlp(torch).bfloat16()
    st_torch.save_file(tm.state_dict(), str(tmp_path / "t.safetensors"))
    model = jp.load(tmp_path / "t.safetensors", like=_jp_mlp().bfloat16())
    for name, value in model.state_dict().items():
        assert value.dtype == jnp.bfloat16
        want = tm.state_dict()[name]
        assert_bitwise_equal(value, want.view(torch.int16).numpy().view(jnp.bfloat16), name)
    # jparam -> torch
    jp.save(tmp_path / "j.safetensors", model)
    back = st_torch.load_file(str(tmp_path / "j.safetensors"))
    for name, value in model.state_dict().items():
        assert back[name].dtype == torch.bfloat16
        np.testing.assert_array_equal(
            back[name].view(torch.int16).numpy(), np.asarray(value).view(np.int16)
        )


def test_from_torch_state_dict_keeps_bfloat16(tmp_path):
    torch = pytest.importorskip("torch")
    tm = _torch_convnet(torch).bfloat16()
    state = jp.from_torch_state_dict(tm.state_dict())
    assert list(state) == list(tm.state_dict())
    for name, t in tm.state_dict().items():
        assert isinstance(state[name], jax.Array)
        if t.dtype == torch.bfloat16:
            assert state[name].dtype == jnp.bfloat16, name
            np.testing.assert_array_equal(
                np.asarray(state[name]).view(np.int16), t.view(torch.int16).numpy()
            )
        else:  # num_batches_tracked stays an integer
            assert jnp.issubdtype(state[name].dtype, jnp.integer)
            np.testing.assert_array_equal(state[name], t.numpy())
    model = jp.load_state_dict(ConvNet(jax.random.key(0)).bfloat16(), state)
    chex.assert_trees_all_equal(model.state_dict()["conv.weight"], state["conv.weight"])


def test_checksum_covers_the_dtype_in_the_header(tmp_path):
    path = tmp_path / "m.safetensors"
    jp.save(path, {"w": jnp.arange(4, dtype=jnp.float32)})
    raw = path.read_bytes()
    assert raw.count(b'"F32"') == 1
    path.write_bytes(raw.replace(b'"F32"', b'"I32"'))
    with pytest.raises(jp.CheckpointError, match="checksum"):
        jp.load_file(path)


def test_int64_values_that_would_wrap_are_refused_by_parameter():
    if jax.config.jax_enable_x64:
        pytest.skip("64-bit integers fit when x64 is on")
    with pytest.raises(ValueError, match="outside the int32 range"):
        jp.Buffer(np.array([2**40], dtype=np.int64))
    assert int(jp.Buffer(np.array([7], dtype=np.int64)).value[0]) == 7
