"""Kill injection for tests/test_crash_safety.py (not a test module).

``python tests/crash_harness.py`` is a *zygote*: it imports jax, jparam and orbax once (about
two seconds), then reads one JSON request a line from stdin and forks one child per job, so each
kill costs a fork instead of a fresh interpreter. JAX's runtime starts only in the children
(the zygote creates no array), which keeps the fork safe.

A child builds version ``version`` of a tiny model (every value equals the version), then runs a
save with every filesystem operation counted (`count_operations`): opening a file for writing,
``write``, ``fsync``, ``rename``/``replace``, ``mkdir``, ``rmdir``, ``unlink``, ``chmod``,
``rmtree`` and safetensors' ``save_file``. Right before operation number ``kill_at`` it logs the
operation and sends itself SIGKILL; with ``kill_at = -1`` it runs to the end and writes the
number of operations to ``<out>.json``. The zygote answers each request with one JSON line: per
job, the signal that ended it or its exit code.

``count="jparam"`` counts only the operations jparam itself makes (its renames and deletions,
not the files orbax writes for it), ``count="all"`` every one.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp

with contextlib.suppress(ImportError):
    import orbax.checkpoint  # noqa: F401  (imported before forking: children only fork)

# -- the saved things: every value equals the version ----------------------------------------------


class Tiny(jp.Module):
    w: jp.Parameter
    b: jp.Parameter
    seen: jp.Buffer

    def __init__(self, version: int):
        # Built from NumPy: a child then compiles nothing, which keeps a kill cheap.
        self.w = jp.Parameter(np.full((3, 2), version, np.float32))
        self.b = jp.Parameter(np.arange(2, dtype=np.float32) + version)
        self.seen = jp.Buffer(np.array(version, np.int32))


def key(version: int) -> jax.Array:
    """``jax.random.key(version)``, without compiling anything."""
    return jax.random.wrap_key_data(np.array([0, version], np.uint32))


def optimizer(model: Tiny, version: int) -> jp.Optimizer:
    """An Adam optimizer whose every state value equals ``version``."""
    opt = jp.Optimizer(optax.adam(1e-3), model)
    state = {n: jnp.full(v.shape, version, v.dtype) for n, v in opt.state_dict().items()}
    return opt.load_state_dict(state)


def version_of_model(model: Tiny) -> int:
    """The version a loaded model holds; fails unless every value agrees."""
    version = int(model.seen.value)
    np.testing.assert_array_equal(np.asarray(model.w.value), np.full((3, 2), float(version)))
    np.testing.assert_array_equal(np.asarray(model.b.value), np.arange(2.0) + version)
    return version


# Each saver builds what it saves first, then returns the save itself: only the save is counted.


def save_file(directory: str, version: int):
    model = Tiny(version)
    return lambda: jp.save(Path(directory) / "model.safetensors", model)


def save_checkpoint(
    directory: str, version: int, step: int = 3, keep: int | None = 2, opt: bool = True
):
    """Saves the model, its optimizer (unless ``opt=False``), a PRNG key and a plain extra."""
    model = Tiny(version)
    extra = {"opt": optimizer(model, version)} if opt else {}

    def save():
        jp.save_checkpoint(
            directory, step, model=model, key=key(version), keep=keep, version=version, **extra
        )

    return save


def save_sharded(directory: str, version: int):
    model = Tiny(version)
    return lambda: jp.save_sharded(Path(directory) / "ckpt", model, overwrite=True)


def save_same_step(directory: str, version: int, times: int):
    """Saves step 7 ``times`` times: versions ``version``, ``version + 1``, ..."""
    saves = [
        save_checkpoint(directory, version + i, step=7, keep=None, opt=False) for i in range(times)
    ]
    return lambda: [save() for save in saves]


SAVERS = {
    "save": save_file,
    "checkpoint": save_checkpoint,
    "sharded": save_sharded,
    "same_step": save_same_step,
}

# -- counting and killing -------------------------------------------------------------------------

# In "jparam" mode an operation counts when jparam code made it directly, through path objects
# at most: jparam's rmtree counts, each unlink inside it does not, nor anything orbax does.
_PATH_WRAPPERS = {__name__, "pathlib", "posixpath", "genericpath"}


def _called_from_jparam() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module not in _PATH_WRAPPERS and not module.startswith("etils."):
            return module == "jparam" or module.startswith("jparam.")
        frame = frame.f_back
    return False


class _Counter:
    def __init__(self, kill_at: int, only_jparam: bool, log_fd: int, write: object):
        self.kill_at, self.only_jparam = kill_at, only_jparam
        self.log_fd, self.write = log_fd, write
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, op: str, target: object) -> None:
        if self.only_jparam and not _called_from_jparam():
            return
        with self.lock:
            n = self.count
            self.count += 1
            if n == self.kill_at:
                what = f"{op} {target}"[:300]
                self.write(self.log_fd, f"killed before operation {n}: {what}\n".encode())
                os.kill(os.getpid(), signal.SIGKILL)


class _CountedFile:
    """A file object whose writes are counted operations."""

    def __init__(self, f: object, counter: _Counter):
        self._f, self._counter = f, counter

    def write(self, data: object) -> object:
        self._counter("write", getattr(self._f, "name", "?"))
        return self._f.write(data)

    def writelines(self, lines: object) -> object:
        self._counter("write", getattr(self._f, "name", "?"))
        return self._f.writelines(lines)

    def __enter__(self) -> _CountedFile:
        self._f.__enter__()
        return self

    def __exit__(self, *exc: object) -> object:
        return self._f.__exit__(*exc)

    def __iter__(self) -> object:
        return iter(self._f)

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def count_operations(kill_at: int, only_jparam: bool, log_fd: int):
    """Counts filesystem operations (see the module docstring); kills before ``kill_at``."""
    import safetensors.numpy

    real_write = os.write
    counter = _Counter(kill_at, only_jparam, log_fd, real_write)
    patches: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, make: object) -> None:
        real = getattr(owner, name)
        patches.append((owner, name, real))
        setattr(owner, name, make(real))

    def counted(op: str):
        def make(real):
            def wrapper(*args, **kwargs):
                counter(op, args[0] if args else "")
                return real(*args, **kwargs)

            return wrapper

        return make

    def counted_open(real):
        def wrapper(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                counter(f"open({mode})", file)
                return _CountedFile(real(file, mode, *args, **kwargs), counter)
            return real(file, mode, *args, **kwargs)

        return wrapper

    def counted_os_open(real):
        def wrapper(path, flags, *args, **kwargs):
            if flags & _WRITE_FLAGS:
                counter("os.open", path)
            return real(path, flags, *args, **kwargs)

        return wrapper

    patch(builtins, "open", counted_open)
    patch(io, "open", counted_open)
    patch(os, "open", counted_os_open)
    for name in ("write", "fsync", "rename", "replace", "mkdir", "rmdir", "unlink", "remove"):
        patch(os, name, counted(f"os.{name}"))
    for name in ("truncate", "ftruncate", "chmod"):
        patch(os, name, counted(f"os.{name}"))
    patch(shutil, "rmtree", counted("shutil.rmtree"))
    patch(safetensors.numpy, "save_file", counted("save_file"))
    try:
        yield counter
    finally:
        for owner, name, real in reversed(patches):
            setattr(owner, name, real)


# -- the zygote -----------------------------------------------------------------------------------


def _child(job: dict) -> None:
    out = job["out"]
    log_fd = os.open(out + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    save = SAVERS[job["saver"]](job["dir"], job["version"], **job.get("kwargs", {}))
    with count_operations(job["kill_at"], job["count"] == "jparam", log_fd) as counter:
        save()
    Path(out + ".json").write_text(json.dumps({"ops": counter.count}))


def _fork(job: dict) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            _child(job)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _status(pid: int) -> dict:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status), "code": None}
    return {"signal": None, "code": os.WEXITSTATUS(status)}


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        jobs = json.loads(line)
        pids = [_fork(job) for job in jobs]
        print(json.dumps([_status(pid) for pid in pids]), flush=True)


if __name__ == "__main__":
    main()
