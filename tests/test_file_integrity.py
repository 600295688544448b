"""What a safetensors file can hold and what a damaged one does: every JAX dtype round-trips (or
is refused before the old file is touched), float8 files from PyTorch load, every flipped bit of
a jparam file is refused, and hostile headers fail with `jp.CheckpointError` within a memory
limit. Expected values come from outside jparam: PyTorch, the safetensors library, ml_dtypes,
flipped bits and hand-built headers."""

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import jparam as jp

REPO = Path(__file__).resolve().parents[1]


def _every_jnp_dtype() -> dict[str, np.dtype]:
    """Every concrete scalar type ``jax.numpy`` exports, by dtype (aliases folded)."""
    dtypes = {np.dtype(t) for t in vars(jnp).values() if type(t).__name__ == "_ScalarMeta"}
    return {d.name: d for d in dtypes}  # jnp.float32, jnp.int4, ... (not jnp.floating)


JNP_DTYPES = _every_jnp_dtype()
X64 = {"float64", "int64", "uint64", "complex128"}
NO_XLA = {"float6_e2m3fn", "float6_e3m2fn"}  # in jnp, but XLA cannot hold them


_SUB_BYTE = {
    "int4": 4,
    "uint4": 4,
    "float4_e2m1fn": 4,
    "int2": 2,
    "uint2": 2,
    "int1": 1,
    "uint1": 1,
}


def _random_bits(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]):
    """Random bit patterns of ``dtype`` (NaN payloads included); the valid low bits only for
    types narrower than a byte, and 0/1 for bool."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if width := _SUB_BYTE.get(dtype.name):
        return rng.integers(0, 2**width, size=shape, dtype=np.uint8).view(dtype)
    n = int(np.prod(shape))
    return np.frombuffer(rng.bytes(n * dtype.itemsize), dtype=dtype).reshape(shape).copy()


def _bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n, json.loads(raw[8 : 8 + n])


class Holder(jp.Module):
    """One buffer and one frozen parameter of any dtype."""

    buf: jp.Buffer
    param: jp.Parameter

    def __init__(self, a, b):
        self.buf = jp.Buffer(a)
        self.param = jp.Parameter(b, trainable=False)


# -- every dtype ----------------------------------------------------------------------------------


def test_the_dtype_list_is_complete():
    """The sweep below covers what the issue names, so a JAX upgrade cannot shrink it silently."""
    for name in ("bool", "int8", "uint32", "bfloat16", "float16", "float32", "complex64",
                 "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                 "float8_e4m3b11fnuz", "float8_e8m0fnu", "float8_e3m4", "float8_e4m3",
                 "int4", "uint4", "float4_e2m1fn"):  # fmt: skip
        assert name in JNP_DTYPES, name


@pytest.mark.parametrize("name", sorted(set(JNP_DTYPES) - X64 - NO_XLA))
def test_every_jnp_dtype_round_trips_bit_exactly(tmp_path, name):
    dtype = JNP_DTYPES[name]
    rng = np.random.default_rng(sorted(JNP_DTYPES).index(name))
    # As JAX holds them (jnp.uint1 arrays come back as int1): what a model would save.
    a = jax.device_put(_random_bits(rng, dtype, (3, 5)))
    b = jax.device_put(_random_bits(rng, dtype, ()))
    model = Holder(a, b)
    path = tmp_path / "m.safetensors"
    jp.save(path, model)
    arrays, meta = jp.load_file(path)
    assert meta == {"format": "pt"}
    for key, want in (("buf", a), ("param", b)):
        got = arrays[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=key)
    like = Holder(*(jax.device_put(np.zeros(x.shape, x.dtype)) for x in (a, b)))
    loaded = jp.load(path, like=like)
    np.testing.assert_array_equal(_bits(loaded.buf.value), _bits(a))
    assert loaded.param.dtype == b.dtype


def test_dtypes_with_a_safetensors_code_are_stored_under_it(tmp_path):
    """The code the safetensors library itself writes for each dtype; jparam's own encoding
    (raw bytes plus `jparam.dtypes`) only for the dtypes it has no code for."""
    for name, dtype in sorted(JNP_DTYPES.items()):
        if name in X64 or name in NO_XLA:  # (complex128: the x64 test below)
            continue
        a = jax.device_put(np.zeros((2, 3), dtype))  # (jnp.asarray fails on NumPy int1 arrays)
        try:
            lib = safetensors.numpy.save({"x": np.asarray(a)})
            (n,) = struct.unpack("<Q", lib[:8])
            want = json.loads(lib[8 : 8 + n])["x"]["dtype"]
        except Exception:  # safetensors has no code for it
            want = None
        jp.save(tmp_path / "d.safetensors", {"x": a})
        _, head = _header(tmp_path / "d.safetensors")
        marked = json.loads(head["__metadata__"].get("jparam.dtypes", "{}"))
        if want is not None:
            assert head["x"]["dtype"] == want and marked == {}, name
        else:
            assert head["x"]["dtype"] == "U8" and head["x"]["shape"] == [2, 3], name
            assert marked == {"x": name}


_X64_ROUND_TRIP = r"""
import sys
import jax
import numpy as np
import jparam as jp

assert jax.config.jax_enable_x64
path = sys.argv[1]
rng = np.random.default_rng(0)
state = {}
for name in ("float64", "int64", "uint64", "complex128"):
    dtype = np.dtype(name)
    state[name] = np.frombuffer(rng.bytes(12 * dtype.itemsize), dtype).reshape(3, 4).copy()
state["small_c128"] = np.array(1.5 - 2.25j)
jp.save(path, state)
arrays, _ = jp.load_file(path)
for name, want in state.items():
    got = np.asarray(arrays[name])
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
    assert got.tobytes() == want.tobytes(), name
print("ok")
"""


def test_64_bit_dtypes_round_trip_with_x64(tmp_path):
    path = tmp_path / "x64.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _X64_ROUND_TRIP, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
    # Outside jparam: the safetensors library reads the same values (complex128 as pairs).
    raw = safetensors.numpy.load_file(str(path))
    assert raw["float64"].dtype == np.float64 and raw["uint64"].dtype == np.uint64
    assert raw["small_c128"].tolist() == [1.5, -2.25]


@pytest.mark.parametrize("name", sorted(NO_XLA & set(JNP_DTYPES)))
def test_a_dtype_no_jax_array_can_hold_is_refused_before_the_old_file_is_touched(tmp_path, name):
    path = tmp_path / "m.safetensors"
    jp.save(path, {"w": np.ones(3, np.float32)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=rf"'w'.*{name}.*cannot hold"):
        jp.save(path, {"w": np.zeros(3, JNP_DTYPES[name])})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_jparam_float8_files_load_in_torch_with_the_same_values(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    rng = np.random.default_rng(3)
    state = {
        "e4m3": _random_bits(rng, np.dtype(jnp.float8_e4m3fn), (4, 8)),
        "e5m2": _random_bits(rng, np.dtype(jnp.float8_e5m2), (4, 8)),
    }
    jp.save(tmp_path / "f8.safetensors", state)
    back = st_torch.load_file(str(tmp_path / "f8.safetensors"))
    assert back["e4m3"].dtype == torch.float8_e4m3fn and back["e5m2"].dtype == torch.float8_e5m2
    for name, want in state.items():
        np.testing.assert_array_equal(back[name].float().numpy(), want.astype(np.float32))


# -- float8 from PyTorch ----------------------------------------------------------------------


TORCH_FLOAT8 = [
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
]


def _torch_float8(torch, name):
    torch.manual_seed(0)
    t = (torch.randn(5, 7) * 8).to(getattr(torch, name))
    return t


@pytest.mark.parametrize("name", TORCH_FLOAT8)
def test_torch_written_float8_files_load_with_torch_values(tmp_path, name):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    if not hasattr(torch, name):
        pytest.skip(f"torch has no {name}")
    t = _torch_float8(torch, name)
    st_torch.save_file({"w": t, "b": torch.arange(3.0)}, str(tmp_path / "t.safetensors"))
    arrays, _ = jp.load_file(tmp_path / "t.safetensors")
    assert arrays["w"].dtype == np.dtype(getattr(jnp, name))
    np.testing.assert_array_equal(np.asarray(arrays["w"]).astype(np.float32), t.float().numpy())
    np.testing.assert_array_equal(arrays["b"], [0.0, 1.0, 2.0])


def test_torch_float8_files_load_into_a_float8_model(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    t = _torch_float8(torch, "float8_e4m3fn")
    st_torch.save_file({"buf": t, "param": t[0].clone()}, str(tmp_path / "t.safetensors"))
    like = Holder(jnp.zeros((5, 7), jnp.float8_e4m3fn), jnp.zeros(7, jnp.float8_e4m3fn))
    model = jp.load(tmp_path / "t.safetensors", like=like)
    np.testing.assert_array_equal(np.asarray(model.buf.value, np.float32), t.float().numpy())


@pytest.mark.parametrize("name", TORCH_FLOAT8)
def test_from_torch_state_dict_accepts_float8(name):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, name):
        pytest.skip(f"torch has no {name}")
    t = _torch_float8(torch, name)
    state = jp.from_torch_state_dict({"w": t, "w_t": t.t()})  # a non-contiguous view too
    assert state["w"].dtype == np.dtype(getattr(jnp, name))
    np.testing.assert_array_equal(np.asarray(state["w"], np.float32), t.float().numpy())
    np.testing.assert_array_equal(np.asarray(state["w_t"], np.float32), t.float().numpy().T)


def test_torch_meta_tensors_are_refused_naming_the_key():
    torch = pytest.importorskip("torch")
    state = torch.nn.Linear(2, 3, device="meta").state_dict()
    with pytest.raises(ValueError, match="'?weight'? has no data: .*meta device"):
        jp.from_torch_state_dict(state)
    with pytest.raises(ValueError, match="meta device"):
        jp.from_torch_state_dict({"x": torch.empty(2, dtype=torch.float8_e4m3fn, device="meta")})


# -- refused before anything is written ---------------------------------------------------------


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "m.safetensors"
    jp.save(path, {"w": np.arange(3, dtype=np.float32)})
    return path


def _unchanged(path: Path, before: bytes) -> None:
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_an_entry_named_like_safetensors_metadata_is_refused(old_file):
    before = old_file.read_bytes()
    with pytest.raises(ValueError, match="'__metadata__'.*reserves"):
        jp.save(old_file, {"w": np.ones(2, np.float32), "__metadata__": np.ones(2, np.float32)})
    _unchanged(old_file, before)


def test_a_variable_named_like_safetensors_metadata_is_refused(old_file):
    before = old_file.read_bytes()
    with pytest.raises(ValueError, match="'__metadata__'"):
        jp.save(old_file, {"__metadata__": jp.Buffer(jnp.ones(2)), "w": jp.Buffer(jnp.ones(1))})
    _unchanged(old_file, before)


def test_saving_an_abstract_model_names_the_first_abstract_path(old_file):
    before = old_file.read_bytes()
    model = Holder(jnp.ones((2, 3)), jnp.ones(4))
    abstract = jax.eval_shape(lambda: model)
    # state_dict order (parameters, then buffers): the parameter comes first.
    with pytest.raises(ValueError, match=r"'param' is abstract \(f32\[4\]\).*[Mm]aterialise"):
        jp.save(old_file, abstract)
    _unchanged(old_file, before)
    half = jp.at(model, "buf").set(jp.Buffer(jax.ShapeDtypeStruct((2, 3), jnp.float32)))
    with pytest.raises(ValueError, match="'buf' is abstract"):
        jp.save(old_file, half)
    _unchanged(old_file, before)


def test_saving_inside_jit_is_refused(old_file):
    before = old_file.read_bytes()

    @jax.jit
    def step(x):
        jp.save(old_file, {"x": x})
        return x

    with pytest.raises(ValueError, match="'x' is a tracer"):
        step(jnp.ones(2))
    _unchanged(old_file, before)


# -- every flipped bit is refused -----------------------------------------------------------------


def _small_jparam_file(path: Path) -> bytes:
    """2 tensors with safetensors codes, 1 stored as jparam's U8, and user metadata."""
    state = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "steps": np.array([1, -2], np.int8),
        "f8": jax.device_put(np.array([0.5, -3.0], jnp.float8_e3m4)),
    }
    jp.save(path, state, metadata={"epoch": "12", "note": "fine"})
    return path.read_bytes()


def _flips_that_load(path: Path, raw: bytes, bits) -> list[str]:
    """Flips each bit of ``raw`` in turn (one at a time) and lists those that do not raise
    `jp.CheckpointError`: what loaded, or the wrong exception."""
    bad = []
    for bit in bits:
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(flipped)
        try:
            jp.load_file(path)
        except jp.CheckpointError as e:
            assert str(path) in str(e), e
        except Exception as e:
            bad.append(f"bit {bit}: {type(e).__name__}: {e}")
        else:
            bad.append(
                f"bit {bit} (byte {bit // 8}: {bytes(flipped[bit // 8 : bit // 8 + 1])!r}) loads"
            )
    return bad


@pytest.mark.slow
def test_every_bit_of_the_prefix_and_header_is_covered(tmp_path):
    path = tmp_path / "f.safetensors"
    raw = _small_jparam_file(path)
    jp.load_file(path)  # intact, it loads
    start, _ = _header(path)
    assert _flips_that_load(path, raw, range(start * 8)) == []


def test_a_sample_of_prefix_and_header_bits_is_covered(tmp_path):
    """The fast subset of the sweep above: the length prefix, the jparam key names and the
    header checksum's digits in full, and 300 other header bits drawn with a fixed seed."""
    path = tmp_path / "f.safetensors"
    raw = _small_jparam_file(path)
    start, _ = _header(path)
    chosen = set(range(64))
    for mark in (b'"jparam.xxh3_64"', b'"jparam.header_xxh3_64":"', b'"jparam.dtypes"'):
        at = raw.index(mark)
        chosen |= set(range(at * 8, (at + len(mark) + 16) * 8))
    rest = sorted(set(range(start * 8)) - chosen)
    bits = sorted(chosen | set(random.Random(0).sample(rest, 300)))
    assert _flips_that_load(path, raw, bits) == []


def test_every_bit_of_the_data_is_covered(tmp_path):
    path = tmp_path / "f.safetensors"
    raw = _small_jparam_file(path)
    start, _ = _header(path)
    assert _flips_that_load(path, raw, range(start * 8, len(raw) * 8)) == []


def test_a_flipped_metadata_value_is_refused_not_loaded(tmp_path):
    """The regression: an epoch of 12 loaded as 13, and "format" changed silently."""
    path = tmp_path / "f.safetensors"
    raw = _small_jparam_file(path)
    for old, new in ((b'"epoch":"12"', b'"epoch":"13"'), (b'"format":"pt"', b'"format":"pu"')):
        assert raw.count(old) == 1
        path.write_bytes(raw.replace(old, new))
        with pytest.raises(jp.CheckpointError, match="header fails its checksum"):
            jp.load_file(path)


@pytest.mark.parametrize("key", ["jparam.xxh3_64", "jparam.header_xxh3_64"])
def test_a_damaged_checksum_key_name_does_not_switch_verification_off(tmp_path, key):
    path = tmp_path / "f.safetensors"
    raw = _small_jparam_file(path)
    old = f'"{key}"'.encode()
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, old.replace(b"jparam", b"jparan")))
    with pytest.raises(jp.CheckpointError, match="checksum"):
        jp.load_file(path)


def test_a_jparam_file_without_a_header_checksum_is_refused(tmp_path):
    """Files from before the header checksum (per-tensor checksums only) are refused clearly."""
    path = tmp_path / "old.safetensors"
    w = np.arange(3, dtype=np.float32)
    safetensors.numpy.save_file({"w": w}, str(path), metadata={"jparam.xxh3_64": '{"w": "0"}'})
    with pytest.raises(jp.CheckpointError, match="header.*checksum.*missing.*save it again"):
        jp.load_file(path)


def test_files_from_other_writers_load_unverified(tmp_path):
    path = tmp_path / "plain.safetensors"
    w = np.arange(3, dtype=np.float32)
    note = 'mentions "jparam.xxh3_64" and jparam.header_xxh3_64 in a value'
    safetensors.numpy.save_file({"w": w}, str(path), metadata={"format": "np", "note": note})
    arrays, meta = jp.load_file(path)
    np.testing.assert_array_equal(arrays["w"], w)
    assert meta == {"format": "np", "note": note}
    safetensors.numpy.save_file({"w": w}, str(path))  # no metadata at all
    assert jp.load_file(path)[1] == {}


# -- hostile headers ------------------------------------------------------------------------------


def _raw_file(header: bytes | dict, data: bytes = b"", length: int | None = None) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


def _f32(shape, offsets, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


HOSTILE = {
    "length_2_63": _raw_file({"a": _f32([1], [0, 4])}, bytes(4), length=2**63),
    "length_max": _raw_file(b"{}", length=2**64 - 1),
    "length_past_end": _raw_file(b"{}   ", length=1000),
    "length_over_limit": _raw_file(b"{}", length=100_000_001),
    "length_zero": _raw_file(b"", length=0),
    "too_short": b"\x02\x00\x00",
    "overlap": _raw_file({"a": _f32([2], [0, 8]), "b": _f32([2], [4, 12])}, bytes(12)),
    "same_bytes_twice": _raw_file({"a": _f32([2], [0, 8]), "b": _f32([2], [0, 8])}, bytes(8)),
    "gap": _raw_file({"a": _f32([1], [0, 4]), "b": _f32([1], [8, 12])}, bytes(12)),
    "past_the_end": _raw_file({"a": _f32([1], [0, 10**18])}, bytes(4)),
    "trailing_bytes": _raw_file({"a": _f32([1], [0, 4])}, bytes(8)),
    "truncated_data": _raw_file({"a": _f32([4], [0, 16])}, bytes(8)),
    "offsets_not_shape": _raw_file({"a": _f32([3], [0, 8])}, bytes(8)),
    "offsets_reversed": _raw_file({"a": _f32([0], [4, 0])}, bytes(4)),
    "offsets_three": _raw_file({"a": _f32([1], [0, 4, 8])}, bytes(4)),
    "offsets_negative": _raw_file({"a": _f32([1], [-4, 0])}, bytes(4)),
    "shape_negative": _raw_file({"a": _f32([-1, -4], [0, 16])}, bytes(16)),
    "shape_overflow": _raw_file({"a": _f32([2**40, 2**40, 2**40], [0, 0])}, b""),
    "shape_overflow_with_zero": _raw_file({"a": _f32([0, 2**62, 2**62], [0, 0])}, b""),
    "shape_wraps_to_small": _raw_file({"a": _f32([2**32, 2**32], [0, 0], "U8")}, b""),
    "shape_float": _raw_file({"a": _f32([2.0], [0, 8])}, bytes(8)),
    "shape_bool": _raw_file({"a": _f32([True], [0, 4])}, bytes(4)),
    "shape_string": _raw_file({"a": _f32("4", [0, 16])}, bytes(16)),
    "shape_65_dims": _raw_file({"a": _f32([1] * 65, [0, 4])}, bytes(4)),
    "shape_huge_int": _raw_file(
        b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}', bytes(4)
    ),
    "dtype_unknown": _raw_file({"a": _f32([1], [0, 4], "F7")}, bytes(4)),
    "dtype_packed_f4": _raw_file({"a": _f32([2], [0, 1], "F4")}, bytes(1)),
    "dtype_not_string": _raw_file({"a": _f32([1], [0, 4], 4)}, bytes(4)),
    "entry_not_object": _raw_file({"a": [1, 2, 3]}),
    "entry_extra_field": _raw_file({"a": {**_f32([1], [0, 4]), "offset": 8}}, bytes(4)),
    "entry_missing_field": _raw_file({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)),
    "deep_json": _raw_file(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "deep_json_unclosed": _raw_file(b"[" * 100_000),
    "json_list": _raw_file(b"[]"),
    "json_string": _raw_file(b'"safetensors"'),
    "json_number": _raw_file(b"1"),
    "json_null": _raw_file(b"null"),
    "json_nan": _raw_file(b'{"__metadata__":{"x":NaN}}'),
    "json_bad": _raw_file(b'{"a":'),
    "json_trailing": _raw_file(b"{}{}"),
    "duplicate_tensor": _raw_file(
        b'{"a":'
        + json.dumps(_f32([1], [0, 4])).encode()
        + b',"a":'
        + json.dumps(_f32([1], [4, 8])).encode()
        + b"}",
        bytes(8),
    ),
    "duplicate_metadata": _raw_file(b'{"__metadata__":{"epoch":"12","epoch":"13"}}'),
    "non_utf8": _raw_file(b'{"__metadata__":{"x":"\xff\xfe"}}'),
    "metadata_not_strings": _raw_file({"__metadata__": {"epoch": 12}}),
    "metadata_list": _raw_file({"__metadata__": ["x"]}),
    "bool_byte_2": _raw_file({"a": _f32([2], [0, 2], "BOOL")}, b"\x01\x02"),
    "jparam_sums_not_json": _raw_file({"__metadata__": {"jparam.xxh3_64": "{"}}),
}


_HOSTILE_CHILD = r"""
import json, os, resource, sys
import jax, numpy as np
import jparam as jp

jax.device_put(np.ones(3)).block_until_ready()  # start the backend before the limit
pages = int(open("/proc/self/statm").read().split()[0])
limit = pages * os.sysconf("SC_PAGE_SIZE") + 1024 * 2**20  # 1 GiB above what is mapped now
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
for path in sys.argv[1:]:
    try:
        arrays, meta = jp.load_file(path)
        out = {"loaded": sorted(arrays)}
    except BaseException as e:
        out = {"type": type(e).__name__, "message": str(e)[:2000]}
    print(json.dumps({"path": path, **out}), flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_hostile_headers_are_checkpoint_errors_within_a_memory_limit(tmp_path):
    paths = []
    for name, content in HOSTILE.items():
        (p := tmp_path / f"{name}.safetensors").write_bytes(content)
        paths.append(str(p))
    good = tmp_path / "good.safetensors"
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, str(good))
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", _HOSTILE_CHILD, str(good), *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == len(paths) + 1, run.stderr[-3000:]
    assert results[0] == {"path": str(good), "loaded": ["w"]}  # the limit leaves loading alone
    wrong = [
        f"{Path(r['path']).stem}: {r.get('type')}: {r.get('message', r.get('loaded'))}"
        for r in results[1:]
        if r.get("type") != "CheckpointError" or r["path"] not in r["message"]
    ]
    assert wrong == []


def test_hostile_header_messages_say_what_is_wrong(tmp_path):
    expect = {
        "length_2_63": "header length says 9223372036854775808 bytes",
        "overlap": "overlap or leave a gap",
        "offsets_not_shape": "needs 12",
        "shape_negative": "non-negative integers",
        "shape_overflow": "more than 2\\*\\*63",
        "dtype_unknown": "dtype 'F7'",
        "deep_json": "nested too deeply",
        "json_list": "a JSON list, not an object",
        "duplicate_metadata": "'epoch' appears twice",
        "non_utf8": "not UTF-8",
        "trailing_bytes": "need 4 bytes of data and the file holds 8",
    }
    for name, pattern in expect.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(HOSTILE[name])
        with pytest.raises(jp.CheckpointError, match=pattern):
            jp.load_file(path)


def test_float64_values_beyond_float32_are_refused_without_x64(tmp_path):
    if jax.config.jax_enable_x64:
        pytest.skip("with x64 float64 loads as it is")
    path = tmp_path / "f64.safetensors"
    ok = np.array([1.5, -np.inf, np.nan, 3e38], np.float64)
    safetensors.numpy.save_file({"ok": ok, "big": np.array([1.0, 1e300])}, str(path))
    with pytest.raises(jp.CheckpointError, match="'big'.*beyond the float32 range"):
        jp.load_file(path)
    safetensors.numpy.save_file({"ok": ok}, str(path))
    got = np.asarray(jp.load_file(path)[0]["ok"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ok.astype(np.float32))  # (rounded as jnp.asarray would)


def test_a_float8_model_round_trips_through_jp_load(tmp_path):
    """The regression: a float8 model saved, replacing the good file, then failed to load."""
    from jparam import nn

    model = nn.Linear(4, 3, key=jax.random.key(0)).astype(jnp.float8_e4m3fn)
    jp.save(tmp_path / "f8.safetensors", model)
    like = nn.Linear(4, 3, key=jax.random.key(1)).astype(jnp.float8_e4m3fn)
    loaded = jp.load(tmp_path / "f8.safetensors", like=like)
    for name, value in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == jnp.float8_e4m3fn, name
        np.testing.assert_array_equal(_bits(got), _bits(value), err_msg=name)
