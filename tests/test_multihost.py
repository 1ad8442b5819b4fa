"""Multi-host training on one machine: 2 processes x 4 CPU devices (jax.distributed, gloo
collectives, one Grain shard each) must give the same losses as 1 process x 8 devices."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.synthetic import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("corpus"))
    assert build.main(["--out", d, "--preset", "tiny"]) == 0
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cmd(workdir, root, summary, *extra):
    return [sys.executable, "-m", "launch.train", "--config=configs/stage1_motion.py:micro",
            f"--workdir={workdir}", f"--config.data.root={root}", "--config.log.progress=False",
            "--config.schedule.total_steps=3", "--config.ckpt.every_steps=3",
            "--config.log.every_steps=1", "--config.data.batch_size=8",
            "--config.data.num_shards=2", "--config.mesh.data=2", "--config.mesh.fsdp=4",
            f"--summary_json={summary}", *extra]


def _env(devices: int):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    return env


def _losses(path):
    with open(path) as f:
        return [h["video/loss"] for h in json.load(f)["history"]]


@pytest.mark.slow  # three processes compile the step: `make test-slow`
def test_two_processes_match_one_process(corpus, tmp_path):
    one = tmp_path / "one.json"
    r = subprocess.run(_cmd(tmp_path / "w1", corpus, one), cwd=REPO, env=_env(8),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen(_cmd(tmp_path / "w2", corpus, tmp_path / f"two{i}.json",
                                   f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                   f"--process_id={i}"),
                              cwd=REPO, env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a, b0, b1 = _losses(one), _losses(tmp_path / "two0.json"), _losses(tmp_path / "two1.json")
    print("1 process x 8 devices losses ->", a)
    print("2 processes x 4 devices losses ->", b0)
    assert len(a) == 3
    np.testing.assert_allclose(b0, a, rtol=1e-5)
    np.testing.assert_allclose(b1, b0, rtol=0)      # every process logs the same global loss
