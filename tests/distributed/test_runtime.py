"""Cluster resolution, deterministic process shards and global meshes."""

import jax
import pytest

from linalign.distributed import runtime
from linalign.mesh import make_mesh


def test_explicit_args_win_over_environment():
    env = {"LINALIGN_COORDINATOR": "10.0.0.1:1", "LINALIGN_NUM_PROCESSES": "9",
           "LINALIGN_PROCESS_ID": "8"}
    spec = runtime.resolve_cluster("127.0.0.1:1234", 2, 1, env=env)
    assert spec == runtime.ClusterSpec("explicit", "127.0.0.1:1234", 2, 1, None)


def test_environment_variables_give_explicit_cluster():
    env = {"LINALIGN_COORDINATOR": "127.0.0.1:5", "LINALIGN_NUM_PROCESSES": "4",
           "LINALIGN_PROCESS_ID": "3"}
    assert runtime.resolve_cluster(env=env) == runtime.ClusterSpec("explicit", "127.0.0.1:5", 4, 3)


@pytest.mark.parametrize("env, match", [
    ({"LINALIGN_COORDINATOR": "127.0.0.1:5"}, "incomplete"),
    ({"LINALIGN_COORDINATOR": "127.0.0.1:5", "LINALIGN_NUM_PROCESSES": "2",
      "LINALIGN_PROCESS_ID": "2"}, "outside"),
    ({"LINALIGN_COORDINATOR": "127.0.0.1", "LINALIGN_NUM_PROCESSES": "2",
      "LINALIGN_PROCESS_ID": "0"}, "host:port"),
    ({"LINALIGN_NUM_PROCESSES": "two"}, "not an integer"),
])
def test_bad_explicit_settings_are_refused(env, match):
    with pytest.raises(ValueError, match=match):
        runtime.resolve_cluster(env=env)


def test_slurm_multi_task_job_uses_jax_detector():
    env = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_PROCID": "3",
           "SLURM_STEP_NODELIST": "gpu[01-02]"}
    assert runtime.resolve_cluster(env=env).kind == "slurm"
    # A single-task step is just one process.
    assert runtime.resolve_cluster(env={**env, "SLURM_NTASKS": "1"}).kind == "none"
    # The batch script itself (no srun step) is one process too.
    assert runtime.resolve_cluster(env={"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8"}).kind == "none"


def test_tpu_only_when_asked_and_unknown_kind_refused():
    assert runtime.resolve_cluster(env={}).kind == "none"
    assert runtime.resolve_cluster(env={"LINALIGN_CLUSTER": "tpu"}).kind == "tpu"
    assert runtime.resolve_cluster(cluster="tpu", env={}).kind == "tpu"
    with pytest.raises(ValueError, match="unknown cluster kind"):
        runtime.resolve_cluster(cluster="mpi-ish", env={})


@pytest.mark.parametrize("n, procs", [(10, 3), (7, 7), (3, 5), (1000, 8), (0, 2)])
@pytest.mark.parametrize("mode", ["contiguous", "strided"])
def test_shards_partition_the_items(n, procs, mode):
    items = list(range(n))
    shards = [list(runtime.shard_for_process(items, p, procs, mode)) for p in range(procs)]
    assert sorted(sum(shards, [])) == items
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    if mode == "contiguous":
        assert sum(shards, []) == items
        assert [runtime.contiguous_bounds(n, p, procs) for p in range(procs)] == [
            (s[0], s[-1] + 1) if s else (runtime.contiguous_bounds(n, p, procs)[0],) * 2
            for p, s in enumerate(shards)]
    # Stable: a second call gives the same answer, and a range stays lazy.
    assert list(runtime.shard_for_process(range(n), 1 % procs, procs, mode)) == shards[1 % procs]
    assert isinstance(runtime.shard_for_process(range(n), 0, procs, mode), range)


def test_shard_arguments_checked():
    with pytest.raises(ValueError, match="outside"):
        runtime.shard_for_process([1, 2], 2, 2)
    with pytest.raises(ValueError, match="unknown shard mode"):
        runtime.shard_for_process([1, 2], 0, 2, "random")


def test_local_data_shards_of_a_one_process_mesh():
    mesh = make_mesh("data=-1,model=4")
    assert runtime.local_data_shards(mesh) == (0, mesh.shape["data"])
    assert runtime.contiguous_bounds(10, 1, 3) == (4, 7)


def test_initialize_single_process_is_a_no_op(monkeypatch):
    for k in ("LINALIGN_COORDINATOR", "LINALIGN_NUM_PROCESSES", "LINALIGN_PROCESS_ID",
              "LINALIGN_CLUSTER", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(runtime, "_INITIALIZED", None)
    assert runtime.initialize().kind == "none"
    assert jax.process_count() == 1
