"""cluster.yaml, checked offline with Ray's own cluster-launcher code (no AWS, no network).

What `ray up` does before it talks to AWS is run here: ``prepare_config`` (merge with
ray/autoscaler/aws/defaults.yaml, merge setup commands, fill per-type min/max workers) and
``validate_config`` (Ray's JSON schema plus its cross-field checks). The AWS steps that
follow in `ray up` (resource autodetection via DescribeInstanceTypes, IAM / key pair /
subnet / security group bootstrap, launching) need credentials and are not run; a guard
makes any socket connect or boto3 client/resource creation fail the test.
"""
from __future__ import annotations

import copy
import shlex
import socket
from functools import partial
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"

# One shard: 32 records x 6 targets x 12 leads x 4096 samples, float32, per method.
SHARD_RELEVANCE_BYTES = 32 * 6 * 12 * 4096 * 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Fail loudly if anything below tries the network or builds an AWS client."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    try:
        import boto3.session
    except ImportError:  # boto3 is optional for these tests
        return
    monkeypatch.setattr(boto3.session.Session, "client", no_network)
    monkeypatch.setattr(boto3.session.Session, "resource", no_network)


@pytest.fixture()
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture()
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw))


def _worker_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def _gpu_types(cfg: dict) -> dict:
    return {k: v for k, v in _worker_types(cfg).items() if v["resources"].get("GPU", 0) >= 1}


def _ray_start_flags(cmds: list[str]) -> dict[str, str]:
    """--flag=value pairs of the `ray start` command in a list of shell commands."""
    starts = [c for c in cmds if "ray start" in c]
    assert len(starts) == 1, starts
    flags = {}
    for tok in shlex.split(starts[0].split("ray start", 1)[1]):
        if tok.startswith("--"):
            key, _, value = tok.partition("=")
            flags[key] = value
    return flags


def test_raw_yaml_passes_ray_schema_and_checks(raw):
    """validate_config: jsonschema against ray/autoscaler/ray-schema.json + Ray's own checks."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    validate_config(copy.deepcopy(raw))
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):  # the check really runs
        validate_config(bad)


def test_prepared_config_is_what_ray_up_validates(raw, prepared):
    """prepare_config + validate_config, in the order `ray up` (_bootstrap_config) runs them."""
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["provider"]["cache_stopped_nodes"] is True
    # Nothing we set was replaced by a default from ray/autoscaler/aws/defaults.yaml.
    for key in ("cluster_name", "max_workers", "available_node_types", "head_node_type",
                "file_mounts", "head_start_ray_commands", "worker_start_ray_commands"):
        assert prepared[key] == raw[key], key
    # Defaults Ray would otherwise use must not leak in (ray 3.0.dev wheel, 0.0.0.0 dashboard).
    merged = prepared["head_setup_commands"] + prepared["worker_setup_commands"]
    assert not any("ray-wheels" in c or "tensorflow2_p310" in c for c in merged)


def test_node_types_and_worker_counts(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0 and head.get("min_workers", 0) == 0
    # The head runs no tasks or actors: the driver, GCS, dashboard and autoscaler only.
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0

    workers = _worker_types(prepared)
    assert workers
    for name, t in workers.items():
        assert t["min_workers"] == 0, f"{name}: scale to zero when idle"
        assert 1 <= t["max_workers"] <= prepared["max_workers"], name
        assert t["node_config"]["InstanceType"], name
        assert t["node_config"].get("ImageId"), f"{name}: Ray's default AMI is Ubuntu 18.04/CUDA 11.2"
        assert "IamInstanceProfile" in t["node_config"], f"{name}: needs S3 access"
    assert sum(t["max_workers"] for t in workers.values()) == prepared["max_workers"]
    assert "IamInstanceProfile" in head["node_config"]


def test_gpu_worker_type(prepared):
    gpu = _gpu_types(prepared)
    assert len(gpu) == 1, "exactly one GPU worker type"
    (name, t), = gpu.items()
    assert t["resources"]["GPU"] == 1
    assert t["resources"]["CPU"] >= 2, "CPU left for the actor and co-located CPU tasks"
    assert t["min_workers"] == 0 and t["max_workers"] >= 1
    assert t["node_config"]["InstanceType"].split(".")[0] in {"g5", "g6", "g6e", "g4dn"}


def test_autoscaler_puts_gpu_actors_on_gpu_workers_and_cpu_tasks_elsewhere(prepared):
    """Ray's own bin-packing (get_nodes_for) on the node types, as the autoscaler runs it."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    scorer = partial(_default_utilization_scorer,
                     node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    (gpu_name, gpu), = _gpu_types(prepared).items()
    cpu_only = [k for k, v in _worker_types(prepared).items() if not v["resources"].get("GPU")]

    # 3 attribution actors with num_gpus=1 (+1 CPU): 3 GPU nodes, nothing else.
    to_add, residual = get_nodes_for(types, {}, head, prepared["max_workers"],
                                     [{"GPU": 1, "CPU": 1}] * 3, scorer)
    assert dict(to_add) == {gpu_name: 3} and residual == []

    # More GPU actors than max_workers of the GPU type: capped, the rest stays pending.
    n = gpu["max_workers"] + 2
    to_add, residual = get_nodes_for(types, {}, head, prepared["max_workers"],
                                     [{"GPU": 1, "CPU": 1}] * n, scorer)
    assert dict(to_add) == {gpu_name: gpu["max_workers"]} and len(residual) == 2

    # CPU-only work (R-peaks, beats): never starts a GPU node when a CPU type exists.
    if cpu_only:
        to_add, residual = get_nodes_for(types, {}, head, prepared["max_workers"],
                                         [{"CPU": 1}] * 40, scorer)
        assert residual == [] and gpu_name not in to_add and head not in to_add
        assert set(to_add) <= set(cpu_only)

    # Scale from zero: with no workers (head CPU 0) Ray Data still submits one read task and
    # the pending GPU actor; these are the demands it shows then (observed with ray 2.60).
    to_add, residual = get_nodes_for(types, {}, head, prepared["max_workers"],
                                     [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}], scorer)
    assert residual == [] and to_add.get(gpu_name) == 1 and head not in to_add

    # Nothing can ever land on the head.
    to_add, residual = get_nodes_for({head: types[head]}, {}, head, 1, [{"CPU": 1}], scorer)
    assert residual == [{"CPU": 1}]


def test_dashboard_binds_localhost_only(prepared):
    head = _ray_start_flags(prepared["head_start_ray_commands"])
    assert head.get("--dashboard-host") == "127.0.0.1"
    assert "--head" in head
    assert head.get("--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    workers = _ray_start_flags(prepared["worker_start_ray_commands"])
    assert workers.get("--address") == "$RAY_HEAD_IP:6379"
    assert "--dashboard-host" not in workers


def test_object_store_sized_for_shards(prepared):
    assert SHARD_RELEVANCE_BYTES == 37_748_736  # ~38 MB per method, as documented
    shard_in_flight = 2 * SHARD_RELEVANCE_BYTES + 32 * 12 * 4096 * 4  # ig+lrp + input
    for cmds in (prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]):
        osm = int(_ray_start_flags(cmds)["--object-store-memory"])
        assert osm >= 40 * shard_in_flight, "room for dozens of shards before spilling"
        # g5.xlarge has 16 GiB RAM, /dev/shm is half of it: stay within /dev/shm and leave
        # most of the RAM to the attribution actor.
        assert osm <= 8 * 2**30 * 0.6


def test_setup_installs_the_repo(raw, prepared):
    assert raw["file_mounts"].get("~/ecgray") == "."
    for local in raw["file_mounts"].values():  # relative to the repo root, where `ray up` runs
        assert (ROOT / local).exists(), local
    assert (ROOT / "pyproject.toml").exists()
    # .gitignore keeps .venv and build outputs out of the rsync to the nodes.
    assert ".gitignore" in raw["rsync_filter"]
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()

    for role in ("head_setup_commands", "worker_setup_commands"):  # after merge_setup_commands
        cmds = prepared[role]
        text = "\n".join(cmds)
        assert "pip install -q -e ~/ecgray" in text, role
        venv = [i for i, c in enumerate(cmds) if "-m venv" in c]
        install = [i for i, c in enumerate(cmds) if "-e ~/ecgray" in c]
        assert venv and install and venv[0] < install[0], role
        assert "ecgray-venv/bin:$PATH" in text and ".bashrc" in text, role
    # The head's autoscaler launches workers with boto3, which ray[default] does not bring.
    assert any("boto3" in c for c in prepared["head_setup_commands"])
    # pyproject pins that the nodes inherit through `pip install -e`.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject and '"ray[default,data]==2.60.0"' in pyproject


def test_client_ray_matches_cluster_pin():
    import ray

    assert ray.__version__ == "2.60.0", "`ray up`/`ray job submit` client must match the cluster"


def test_aws_resource_autodetection_keeps_our_resources(raw):
    """Ray's AWS autodetection merged with our explicit resources, from a stubbed
    DescribeInstanceTypes answer (instance facts from the AWS instance-type pages)."""
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws import node_provider
    from ray.autoscaler._private.util import prepare_config, validate_config

    facts = {  # type: (vCPU, MiB, GPUs, GPU name)
        "m6i.2xlarge": (8, 32768, 0, None),
        "g5.xlarge": (4, 16384, 1, "A10G"),
        "g6.xlarge": (4, 16384, 1, "L4"),
        "c6i.4xlarge": (16, 32768, 0, None),
    }
    listing = []
    for itype, (vcpu, mib, ngpu, gname) in facts.items():
        d = {"InstanceType": itype, "VCpuInfo": {"DefaultVCpus": vcpu}, "MemoryInfo": {"SizeInMiB": mib}}
        if ngpu:
            d["GpuInfo"] = {"Gpus": [{"Name": gname, "Manufacturer": "NVIDIA", "Count": ngpu}]}
        listing.append(d)

    cfg = prepare_config(copy.deepcopy(raw))
    for t in cfg["available_node_types"].values():
        assert t["node_config"]["InstanceType"] in facts, "add it to the stub"
    mp = pytest.MonkeyPatch()
    mp.setattr(node_provider, "list_ec2_instances", lambda region, creds=None: listing)
    try:
        filled = node_provider.AWSNodeProvider.fillout_available_node_types_resources(cfg)
    finally:
        mp.undo()
    validate_config(filled)
    for name, t in filled["available_node_types"].items():
        ours = raw["available_node_types"][name]["resources"]
        for k, v in ours.items():  # explicit values win over autodetection
            assert t["resources"][k] == v, (name, k)
        itype = t["node_config"]["InstanceType"]
        vcpu, _, ngpu, _ = facts[itype]
        if name != cfg["head_node_type"]:
            assert t["resources"]["CPU"] == vcpu, f"{name}: resources.CPU disagrees with {itype}"
            assert t["resources"].get("GPU", 0) == ngpu, f"{name}: resources.GPU disagrees with {itype}"
