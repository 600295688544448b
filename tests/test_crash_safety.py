"""Crash safety, with real kills: a save killed before any of its filesystem operations leaves the
previous checkpoint loadable with its old values and `latest_step` naming a whole step, and the
next save into the same place succeeds and removes what the killed one left.

A child process forked from tests/crash_harness.py counts the filesystem operations of one save
and sends itself SIGKILL right before operation N, for N = 0, 1, 2, ... until a save runs to the
end. Every value of the model saved as version v equals v, so whatever loads says which version
it is, and a mixture of two versions fails.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest

import jparam as jp
from jparam import tempfiles

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import crash_harness as ch  # noqa: E402

sys.path.remove(str(HERE))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kill injection forks children")


class Zygote:
    """tests/crash_harness.py, running: forks one child per job (see its docstring)."""

    def __init__(self, log: Path):
        env = {**os.environ, "PYTHONPATH": str(HERE.parent), "JAX_PLATFORMS": "cpu"}
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "crash_harness.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
            )
        assert self._read(300) == {"ready": True}

    def _read(self, timeout: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise AssertionError(f"the crash harness died or hung:\n{self.log.read_text()}")
        return json.loads(line)

    def run(self, jobs: list[dict], timeout: float = 300) -> list[dict]:
        self.proc.stdin.write(json.dumps(jobs) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "stderr.txt")
    yield z
    z.close()


class Outcome(NamedTuple):
    killed: bool
    ops: int | None  # operations of a save that ran to the end
    log: str  # which operation the kill came before, or the child's error


def job(saver: str, directory: Path, version: int, kill_at: int, count: str = "all", **kw):
    return {
        "saver": saver,
        "dir": str(directory),
        "version": version,
        "kill_at": kill_at,
        "count": count,
        "out": f"{directory}.{kill_at}.{version}",
        "kwargs": kw,
    }


def outcome(spec: dict, status: dict) -> Outcome:
    log = Path(spec["out"] + ".log").read_text()
    if status["signal"] == signal.SIGKILL:
        return Outcome(True, None, log)
    assert status["code"] == 0, f"the child failed:\n{log}"
    return Outcome(False, json.loads(Path(spec["out"] + ".json").read_text())["ops"], log)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


PARALLEL = 2  # children killed at once; the checks run one after the other


def sweep(zygote, tmp_path, saver, prepare, check, count="all", upto=None, **kw) -> int:
    """Kills ``saver`` before operation 0, 1, 2, ... until one save completes; returns the count.

    ``prepare(directory)`` makes the previous checkpoint; ``check(directory, outcome)`` asserts
    on what the kill left, then saves again and asserts on that. With ``upto``, only the first
    ``upto`` operations are kill points, and then one save runs to the end.
    """
    base = tmp_path / "base"
    prepare(base)
    for first in range(0, 1000, PARALLEL):
        specs = []
        points = range(first, first + PARALLEL)
        for n in points:
            shutil.copytree(base, tmp_path / f"kill{n}")
            kill_at = -1 if upto is not None and n >= upto else n
            specs.append(job(saver, tmp_path / f"kill{n}", 2, kill_at, count, **kw))
        for n, spec, status in zip(points, specs, zygote.run(specs)):
            result = outcome(spec, status)
            try:
                check(Path(spec["dir"]), result)
            except BaseException as e:
                raise AssertionError(f"after a kill at operation {n}: {result.log}") from e
            shutil.rmtree(spec["dir"])
            if not result.killed:
                if upto is None:
                    assert result.ops == n, (result.ops, n)  # every operation was a kill point
                return result.ops
    raise AssertionError("the save never completed")


# -- jp.save --------------------------------------------------------------------------------------


def check_file(work: Path, result: Outcome) -> None:
    path = work / "model.safetensors"
    version = ch.version_of_model(jp.load(path, ch.Tiny(0)))
    assert version in ((1, 2) if result.killed else (2,))
    if not result.killed:
        assert entries(work) == ["model.safetensors"]
    jp.save(path, ch.Tiny(3))  # succeeds, and removes the killed save's leftovers
    assert entries(work) == ["model.safetensors"]
    assert ch.version_of_model(jp.load(path, ch.Tiny(0))) == 3


def test_kill_before_every_operation_of_save(zygote, tmp_path):
    def prepare(base):
        jp.save(base / "model.safetensors", ch.Tiny(1))

    ops = sweep(zygote, tmp_path, "save", prepare, check_file)
    assert ops >= 8  # mkdir, save_file, write, fsync, chmod, fsync, replace, fsync, rmdir


# -- jp.save_checkpoint ---------------------------------------------------------------------------


def load_version(directory: Path, step: int, opt: bool = False) -> int:
    """Loads ``step`` whole and returns its version: model, optimizer, key and extras agree."""
    like = ch.Tiny(0)
    opt_like = ch.optimizer(like, 0) if opt else None
    ckpt = jp.load_checkpoint(directory, model=like, opt=opt_like, step=step)
    version = ckpt["version"]
    assert ckpt["step"] == step
    assert ch.version_of_model(ckpt["model"]) == version
    np.testing.assert_array_equal(
        jax.random.key_data(ckpt["key"]), jax.random.key_data(jax.random.key(version))
    )
    if "opt" in ckpt:
        for name, value in ckpt["opt"].state_dict().items():
            np.testing.assert_array_equal(np.asarray(value), version, err_msg=name)
    return version


def prepare_steps(base: Path, opt: bool) -> None:
    """Steps 1, 2 and 3, all version 1; the killed save replaces step 3 with keep=2."""
    for step in (1, 2, 3):
        ch.save_checkpoint(str(base), 1, step=step, keep=None, opt=opt)()


def check_steps(work: Path, result: Outcome, opt: bool) -> None:
    assert jp.latest_step(work) == 3
    version = load_version(work, 3, opt)
    assert version in ((1, 2) if result.killed else (2,))
    assert load_version(work, 2, opt) == 1
    if (work / "step_000000001").exists():  # pruned whole or not at all
        assert load_version(work, 1, opt) == 1
    else:
        with pytest.raises(FileNotFoundError, match=r"no step 1 .*saved: \[2, 3\]"):
            load_version(work, 1, opt)
    if not result.killed:
        assert entries(work) == ["step_000000002", "step_000000003"]
    # The next save succeeds, keeps the step 3 that was visible, and leaves nothing else.
    ch.save_checkpoint(str(work), 3, step=4, keep=2, opt=opt)()
    assert entries(work) == ["step_000000003", "step_000000004"]
    assert jp.latest_step(work) == 4
    assert load_version(work, 4, opt) == 3
    assert load_version(work, 3, opt) == version


@pytest.mark.parametrize(
    "opt",
    [
        # The model, a PRNG key (extra.safetensors) and plain extras: every step-level operation.
        False,
        # An optimizer's file adds the same operations as the model's, a third time.
        pytest.param(True, marks=pytest.mark.slow),
    ],
)
def test_kill_before_every_operation_of_save_checkpoint(zygote, tmp_path, opt):
    ops = sweep(
        zygote,
        tmp_path,
        "checkpoint",
        functools.partial(prepare_steps, opt=opt),
        functools.partial(check_steps, opt=opt),
        opt=opt,
    )
    assert ops >= 30


def dead_pid() -> int:
    """The id of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(directory: Path, target: str, pid: int, kind: str) -> Path:
    return directory / f".{target}.jp-{tempfiles.HOST}-{pid}-{pid:012x}.{kind}"


def prepare_leftovers(base: Path) -> None:
    """What earlier killed saves left: step 3 moved aside by a replacement killed before the
    new one was renamed in, a half-written step 4 and a half-deleted step, all by dead writers."""
    prepare_steps(base, opt=False)
    pid = dead_pid()
    (base / "step_000000003").rename(leftover(base, "step_000000003", pid, "old"))
    half = shutil.copytree(base / "step_000000002", leftover(base, "step_000000004", pid, "tmp"))
    (half / "extra.json").unlink()
    trash = shutil.copytree(base / "step_000000002", leftover(base, "step_000000000", pid, "trash"))
    (trash / "model.safetensors").unlink()


def test_kill_while_cleaning_up_after_earlier_kills(zygote, tmp_path):
    # The cleanup is the first thing a save does: kill before each of its operations, and a bit
    # further. The step moved aside stands for step 3 throughout, until it is renamed back.
    check = functools.partial(check_steps, opt=False)
    sweep(zygote, tmp_path, "checkpoint", prepare_leftovers, check, upto=12, opt=False)


# -- jp.save_sharded ------------------------------------------------------------------------------


def prepare_sharded(base: Path) -> None:
    jp.save_sharded(base / "ckpt", ch.Tiny(1))


def check_sharded(work: Path, result: Outcome) -> None:
    version = ch.version_of_model(jp.load_sharded(work / "ckpt", ch.Tiny(0)))
    assert version in ((1, 2) if result.killed else (2,))
    if not result.killed:
        assert entries(work) == ["ckpt"]
    jp.save_sharded(work / "ckpt", ch.Tiny(3), overwrite=True)
    assert entries(work) == ["ckpt"]
    assert ch.version_of_model(jp.load_sharded(work / "ckpt", ch.Tiny(0))) == 3


def test_kill_at_each_of_jparams_own_operations_of_save_sharded(zygote, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    # Only jparam's own operations count here: the swap of the new checkpoint for the old one.
    ops = sweep(zygote, tmp_path, "sharded", prepare_sharded, check_sharded, count="jparam")
    assert ops >= 4  # rename aside, rename in, fsync, rename to trash, (removal)


@pytest.mark.slow
def test_kill_before_every_operation_of_save_sharded(zygote, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    sweep(zygote, tmp_path, "sharded", prepare_sharded, check_sharded, count="all")


# -- two processes saving the same step -----------------------------------------------------------


def test_two_processes_saving_the_same_step_both_succeed(zygote, tmp_path):
    times = 6
    jobs = [job("same_step", tmp_path / "run", version, -1, times=times) for version in (10, 100)]
    for spec, status in zip(jobs, zygote.run(jobs)):
        assert not outcome(spec, status).killed
    assert entries(tmp_path / "run") == ["step_000000007"]
    assert jp.latest_step(tmp_path / "run") == 7
    assert load_version(tmp_path / "run", 7) in (10 + times - 1, 100 + times - 1)
