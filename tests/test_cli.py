"""Launcher misuse: one ``error:`` line on stderr, exit status 2, never a traceback or a usage block
(``launch/cli.py``), and output paths checked before any model is loaded."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import stage1_motion
from launch import cli, train_encoders
from launch import generate as gen_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ABSL_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")   # absl/JAX logging, e.g. "I1202 16:00:40.09 ..."


def _one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a launcher's stderr (absl/JAX info logging aside)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not _ABSL_LOG.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _launch(*argv, module="launch.train"):
    r = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, _one_error_line(r.stderr)


@pytest.mark.parametrize("argv, expect", [
    (["--config=configs/stage1_motion.py:nope", "--workdir=W"], "config variant 'nope'"),
    (["--config=configs/stage1_motion.py:tiny", "--config.optim.lrr=1", "--workdir=W"],
     "did you mean 'optim.lr'?"),
    (["--config=configs/stage1_motion.py:tiny"], "--workdir is required"),
    (["--workdir=W"], "--config is required"),
    (["--config=configs/nope.py", "--workdir=W"], "configs/nope.py"),
    (["--config=configs/stage1_motion.py:tiny", "--config.optim.lr=abc", "--workdir=W"], "optim.lr"),
    (["--config=configs/stage1_motion.py:tiny", "--wrokdir=W"], "wrokdir"),
    (["--config=configs/stage1_motion.py:tiny", "--workdir=AFILE/run"], "is a file, not a directory"),
])
def test_train_misuse_is_one_error_line(argv, expect, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = [a.replace("AFILE", str(afile)).replace("=W", f"={tmp_path / 'w'}") for a in argv]
    rc, err = _launch(*argv)
    assert rc == 2 and expect in err, err
    assert not (tmp_path / "w").exists()          # nothing ran, nothing was written


def test_misspelled_override_names_the_field():
    rc, err = _launch("--config=configs/stage2_audio.py:tiny", "--config.optim.lrr=1", "--workdir=/nonexistent/w")
    assert rc == 2
    assert err == ("error: --config.optim.lrr: configs/stage2_audio.py:tiny has no config field "
                   "'optim.lrr'; did you mean 'optim.lr'?")


def test_info_misuse_is_one_error_line():
    r = subprocess.run([sys.executable, "launch/info.py", "--config=configs/stage2_audio.py:huge"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'huge'" in _one_error_line(r.stderr)


def _parse(*args):
    """``cli.parse_flags`` on fresh flags (``--config`` reads its overrides from ``argv``)."""
    argv = ["prog", *args]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
    rest = cli.parse_flags(argv, fv)
    return fv, rest


def test_parse_flags_reports_unknown_fields_with_a_suggestion():
    cfg = "--config=configs/stage1_motion.py:micro"
    fv, rest = _parse(cfg, "--config.optim.lr=0.5")
    assert rest == ["prog"] and fv.config.optim.lr == 0.5
    with pytest.raises(cli.UsageError, match=r"'schedule\.total_stepz'; did you mean 'schedule\.total_steps'\?"):
        _parse(cfg, "--config.schedule.total_stepz=3")
    with pytest.raises(cli.UsageError, match=r"no config field 'qqqq' \(nor one with a similar name\)"):
        _parse(cfg, "--config.qqqq=3")
    with pytest.raises(cli.UsageError, match=r"^--config=configs/stage1_motion.py:micro,ablation=zzz: ablation 'zzz'"):
        _parse(cfg + ",ablation=zzz")


def test_field_paths_lists_sections_and_leaves():
    paths = cli.field_paths(stage1_motion.get_config("micro"))
    assert {"optim", "optim.lr", "model.unet", "data.root"} <= set(paths)
    assert len(paths) == len(set(paths))


def test_train_encoders_misuse_is_one_error_line(capsys):
    assert train_encoders.main(["--data=/d", "--workdir=/w", "--config.optim.lrr=1"]) == 2
    assert _one_error_line(capsys.readouterr().err).endswith("did you mean 'optim.lr'?")
    assert train_encoders.main(["--config=configs/stage2_audio.py:nope", "--data=/d", "--workdir=/w"]) == 2
    assert "config variant 'nope'" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("module", ["launch.generate", "launch.export", "launch.evaluate"])
def test_argparse_launchers_missing_flag_is_one_line(module, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main([])
    assert e.value.code == 2
    assert "required" in _one_error_line(capsys.readouterr().err)


def test_output_problem(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.output_problem(str(tmp_path / "new" / "deeper" / "x.mp4")) is None
    assert "is a file" in cli.output_problem(str(afile / "x.mp4"))
    assert "is a file" in cli.output_problem(str(afile / "a" / "b" / "x.mp4"))
    assert "is a directory" in cli.output_problem(str(tmp_path))
    assert cli.output_problem(str(tmp_path), is_dir=True) is None
    assert "not a directory" in cli.output_problem(str(afile), is_dir=True)


def test_generate_checks_out_before_loading_the_model(tmp_path, monkeypatch, capsys):
    """``starcaster-generate --out a_file/x.mp4``: one line about --out, and no model load."""
    import soundfile  # noqa: PLC0415 (the media extra)


    def no_load(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(gen_cli, "build_generator", no_load)
    wav = str(tmp_path / "a.wav")
    rng = np.random.default_rng(0)
    soundfile.write(wav, (0.3 * rng.normal(size=16000)).clip(-1, 1).astype(np.float32), 16000)
    emb = str(tmp_path / "id.npy")
    np.save(emb, np.ones(512, np.float32))
    afile = tmp_path / "a_file"
    afile.write_text("x")
    rc = gen_cli.main(["--checkpoint", str(tmp_path), "--identity", emb, "--audio", wav,
                       "--out", str(afile / "x.mp4"), "--quiet"])
    assert rc == 2
    assert "--out" in _one_error_line(capsys.readouterr().err)
