"""Run-folder lock: a second writer fails at once naming the first; a dead holder's lock is taken over;
`train` locks its run folder."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from opstylegan.cli.main import cli
from opstylegan.data import build_dataset, write_idx
from opstylegan.io.lock import LOCK_NAME, RunLock, RunLockedError


def test_second_writer_fails_naming_the_holder(tmp_path):
    first = RunLock(tmp_path / "run", command="opstylegan invert --outdir run").acquire()
    assert (tmp_path / "run" / LOCK_NAME).is_file()
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on .*opstylegan invert --outdir run") as e:
        RunLock(tmp_path / "run").acquire()
    assert e.value.holder["pid"] == os.getpid()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run") as again:  # free again once released
        assert again.held
    assert not again.held


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = ("import os, signal, sys; from opstylegan.io.lock import RunLock; "
            f"RunLock({str(tmp_path)!r}, command='holder').acquire(); print('locked', flush=True); "
            "sys.stdin.readline(); os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {p.pid} .*holder"):
            RunLock(tmp_path).acquire()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid  # the dead holder's file is still there
    with RunLock(tmp_path, command="next") as lock:  # ... and taken over
        assert lock.held and json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "next"


class Stop(Exception):
    pass


def test_train_holds_the_lock_and_a_second_train_of_the_run_fails_fast(tmp_path):
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.loop import train

    rng = np.random.default_rng(3)
    write_idx(tmp_path / "train-images-idx3-ubyte", (rng.random((8, 16, 16)) * 255).astype(np.uint8))
    build_dataset(tmp_path / "train-images-idx3-ubyte", tmp_path / "data", resolution=16, channels=1)
    cfg = TrainConfig(data=str(tmp_path / "data"), preset="tiny", kimg=0.004, batch=4, workers=0, tick_kimg=0.004)
    seen = []

    def callback(event, data):  # called once the run folder exists, before the first step
        if event == "run_dir":
            with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
                RunLock(data["run_dir"]).acquire()
            seen.append(data["run_dir"])
            raise Stop

    with pytest.raises(Stop):
        train(cfg, outdir=tmp_path / "runs", callback=callback)
    run_dir = seen[0]
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))  # released though the run failed
    config = open(os.path.join(run_dir, "config.json")).read()
    resume = ["train", "--resume", run_dir, "--kimg", "0.008", "--device", "cpu"]
    with RunLock(run_dir, command="opstylegan train --resume (the first)"):
        r = CliRunner().invoke(cli, resume)
    assert r.exit_code == 1 and "is being written by another run" in r.output and "(the first)" in r.output
    assert "Traceback" not in r.output and open(os.path.join(run_dir, "config.json")).read() == config
    r = CliRunner().invoke(cli, resume)  # unlocked, it gets further: to the missing training state
    assert r.exit_code == 1 and "being written" not in r.output
