"""The config schema: every stage x variant x ablation converts into the typed sections, bad
fields are one-line errors, and every ``--config`` override the docs show parses with the real
flag parser."""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from launch import cli
from starcaster_jax import config_schema as cs

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("stage1_motion", "stage2_audio", "stage3_views")
DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]


def _config(stage: str, arg: str):
    return importlib.import_module(f"configs.{stage}").get_config(arg)


@pytest.mark.parametrize("stage", STAGES)
def test_every_variant_and_ablation_builds_every_section(stage):
    for variant in common.VARIANTS:
        for ablation in common.ABLATIONS:
            s = cs.sections(_config(stage, f"{variant},ablation={ablation}"))
            assert s.run.stage == stage and s.run.ablation == ablation
            assert s.model.unet.block_out_channels == tuple(common._UNET[variant]["block_out_channels"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.optim.lr = 1.0


def test_every_declared_field_is_in_the_schema_and_nothing_else():
    """Both directions: a field added to configs/common.py without a schema entry, or a schema
    entry for a field nobody declares, fails here."""
    c = _config("stage2_audio", "demo")
    cs.sections(c)  # every declared field is known (unknown ones raise)
    for name, cls in cs.SECTION_CLASSES.items():
        assert set(c[name].keys()) == set(cls.__dataclass_fields__), name


@pytest.mark.parametrize("path,value,needle", [
    ("optim.lrr", 1.0, "optim.lrr: unknown field; did you mean optim.lr?"),
    ("data.hflp", True, "data.hflp: unknown field; did you mean data.hflip?"),
    ("model.identity.sorce", "auto", "model.identity.sorce: unknown field; did you mean model.identity.source?"),
])
def test_unknown_field_is_one_line_with_did_you_mean(path, value, needle):
    c = _config("stage2_audio", "tiny")
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    with node.unlocked():
        node[leaf] = value
    with pytest.raises(ValueError) as e:
        cs.sections(c)
    assert str(e.value) == needle


@pytest.mark.parametrize("path,value,needle", [
    ("optim.lr", "fast", "optim.lr='fast': expected"),
    ("optim.name", "sgd", "optim.name='sgd': expected one of adamw"),
    ("diffusion.sampler", "heun", "diffusion.sampler='heun': expected one of ddim|dpmpp_2m|euler"),
])
def test_wrong_kind_or_value_is_one_line(path, value, needle):
    c = _config("stage2_audio", "tiny").to_dict()
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError) as e:
        cs.sections(c)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_missing_field_is_named():
    c = _config("stage1_motion", "tiny").to_dict()
    del c["data"]["read_threads"]
    with pytest.raises(ValueError, match=r"^data\.read_threads: missing"):
        cs.sections(c)


# ----------------------------------------------------------------------------- the docs' overrides
def _doc_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command in the docs' code that passes a ``--config.`` override:
    fenced blocks (continuation lines joined) and inline code spans."""
    out = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        lines = []
        for b in blocks:
            lines += b.replace("\\\n", " ").splitlines()
        lines += re.findall(r"`([^`\n]*--config\.[^`\n]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for line in lines:
            if "--config." not in line:
                continue
            argv = [a for a in shlex.split(line.replace("...", "")) if a.startswith("--config")]
            out.append((f"{doc}: {line.strip()[:80]}", argv))
    return out


DOC_COMMANDS = _doc_commands()


def test_the_docs_show_overrides():
    assert len(DOC_COMMANDS) >= 5, DOC_COMMANDS  # the parser below has something to check


@pytest.mark.parametrize("where,argv", DOC_COMMANDS, ids=[w for w, _ in DOC_COMMANDS])
def test_every_documented_override_is_accepted_by_the_flag_parser(where, argv, monkeypatch):
    """The real parser (ml_collections' config_flags, locked as the launchers lock it) accepts
    each override; placeholders like ``<field>`` or ``…`` are not commands and are skipped."""
    if any("<" in a or "…" in a or a == "--config." for a in argv):
        pytest.skip(f"{where}: a placeholder, not a command")
    monkeypatch.chdir(REPO)
    spec = [a for a in argv if a.startswith("--config=")]
    if not spec:  # an override shown on its own applies to any stage
        argv = ["--config=configs/stage2_audio.py:demo", *argv]
    argv = ["prog", *argv]
    fv = flags.FlagValues()   # config_flags reads the overrides from the argv it is given
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    cli.parse_flags(argv, fv)  # the launchers' own parsing (one-line UsageError on a bad override)
    cs.sections(fv.config)
