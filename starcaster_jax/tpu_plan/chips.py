"""The target: TPU chip facts, slice topologies, their device descriptions and mesh, and the
config resolved for TPU. Kept apart from the programs so that the CLI can check a topology
name (and tell libtpu what it needs) before anything is lowered."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
from jax._src import hardware_utils
from jax.experimental import topologies

from starcaster_jax import sharding as shd
from starcaster_jax.models.attention import resolve_implementation
from starcaster_jax.models.unet import resolve_dtype


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip facts. Peak, bandwidths and chips per host: cloud.google.com/tpu/docs (v5p, v6e,
    v5e system architecture; ICI given there in Gbit/s, here in bytes/s). ``hbm_bytes`` is the HBM
    XLA:TPU lets a program use (libtpu 0.0.51's compile-time OOM message, "available HBM"), a
    little under the nominal 95/32/16 GiB."""
    name: str
    hbm_bytes: float          # usable HBM per chip
    peak_bf16: float          # dense bf16 FLOP/s
    hbm_bw: float             # bytes/s
    ici_bw: float             # bytes/s, inter-chip interconnect per chip (all links)
    chips_per_host: int


CHIPS = {
    "v5p": Chip("TPU v5p", 95.73 * 2**30, 459e12, 2765e9, 4800e9 / 8, 4),
    "v6e": Chip("TPU v6e", 31.24 * 2**30, 918e12, 1640e9, 3584e9 / 8, 8),
    "v5e": Chip("TPU v5e", 15.75 * 2**30, 197e12, 819e9, 1600e9 / 8, 4),
}

# slice name -> (chip, topology, chips-per-host bounds). v5p names count TensorCores (2/chip).
TOPOLOGIES = {
    "v5p-8": ("v5p", "2x2x1", (2, 2, 1)),
    "v5p-64": ("v5p", "2x4x4", (2, 2, 1)),
    "v6e-8": ("v6e", "2x4", (2, 4, 1)),
    "v5e-16": ("v5e", "4x4", (2, 2, 1)),
}
# Any "<chip>:<AxBxC>" works too (e.g. "v5p:2x2x1"), with the chip's default host bounds.
_HOST_BOUNDS = {"v5p": (2, 2, 1), "v6e": (2, 4, 1), "v5e": (2, 2, 1)}


def parse_topology(name: str) -> tuple[Chip, str, tuple[int, int, int]]:
    if name in TOPOLOGIES:
        chip, topo, bounds = TOPOLOGIES[name]
        return CHIPS[chip], f"{chip}:{topo}", bounds
    m = re.fullmatch(r"(v5p|v6e|v5e):(\d+(?:x\d+)+)", name)
    if not m:
        raise ValueError(f"unknown topology {name!r}: known are {', '.join(TOPOLOGIES)} "
                         "(or '<v5p|v6e|v5e>:<AxB[xC]>', e.g. v5p:2x2x1)")
    dims = [int(x) for x in m.group(2).split("x")]
    bounds = tuple(min(d, b) for d, b in zip(dims + [1] * (3 - len(dims)), _HOST_BOUNDS[m.group(1)]))
    return CHIPS[m.group(1)], name, bounds


def accelerator_type(name: str) -> str:
    """Cloud TPU's accelerator-type name of a topology (``v5p-8``, ``v6e-8``, ``v5litepod-16``)."""
    chip, topo, _ = parse_topology(name)
    n = int(np.prod([int(x) for x in topo.split(":")[1].split("x")]))
    return {"v5p": f"v5p-{2 * n}", "v6e": f"v6e-{n}", "v5e": f"v5litepod-{n}"}[topo.split(":")[0]]


def quiet_libtpu(name: str) -> None:
    """On a machine without TPU chips, tell libtpu what it would otherwise look up in the GCE
    metadata server (and warn about, several lines per process). Call before it loads."""
    if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        return  # a real TPU VM: its own settings stand
    for k, v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", accelerator_type(name)),
                 ("TPU_WORKER_ID", "0"), ("TPU_WORKER_HOSTNAMES", "localhost")):
        os.environ.setdefault(k, v)


def topology_devices(name: str, num_slices: int = 1) -> tuple[Chip, list]:
    """Real TPU device descriptions for ``name`` (needs libtpu), ordered slice-major so that the
    mesh's leading ``data`` axis spans slices (DCN) and ``fsdp``/``tensor`` stay inside one (ICI)."""
    chip, topo, bounds = parse_topology(name)
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo,
                                            chip_config_name="default",
                                            chips_per_host_bounds=bounds, num_slices=num_slices)
    except Exception as e:  # libtpu missing or topology unknown to it
        raise RuntimeError(f"TPU topology {topo!r}: {e} (install the `tpu` extra: "
                           "pip install -e '.[tpu]')") from e
    devices = sorted(desc.devices, key=lambda d: (getattr(d, "slice_index", 0) or 0, d.id))
    return chip, devices


def resolve_for_tpu(config) -> None:
    """Fix the platform-dependent config choices to what a TPU run resolves them to (this host's
    default backend is not the target's)."""
    config.model.unet.attention_impl = resolve_implementation(config.model.unet.attention_impl, "tpu")
    config.model.unet.dtype = resolve_dtype(config.model.unet.dtype, "tpu")


def tpu_mesh(config, devices, num_slices: int = 1):
    """The config's mesh over ``devices``; with several slices, ``mesh.data`` spans them."""
    shape = {a: int(config.mesh[a]) for a in shd.MESH_AXES}
    if num_slices > 1:
        if shape["data"] in (1, -1):
            shape["data"] = num_slices
        if shape["data"] % num_slices:
            raise ValueError(f"mesh.data={shape['data']}: must be a multiple of num_slices={num_slices}")
    return shd.make_mesh(tuple(shape[a] for a in shd.MESH_AXES), devices=devices)
