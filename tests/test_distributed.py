"""Which process group the flags and the environment describe."""

import logging

import pytest

from clipjax.distributed import LaunchError, ProcessGroup, Timeouts, detect, first_host

SRUN = {
    "SLURM_JOB_ID": "1234567",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NODELIST": "gpu[017-018,020],cpu1",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "0",
}


def test_nothing_in_the_environment_is_one_process():
    assert detect({}) is None
    assert detect({"PATH": "/usr/bin", "HOME": "/root"}) is None


def test_flags_win_over_the_environment():
    env = {**SRUN, "JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "9"}
    group = detect(env, "auto", "10.0.0.2:1234", 2, 1)
    assert group == ProcessGroup("flags", "10.0.0.2:1234", 2, 1)


def test_flags_go_together():
    with pytest.raises(LaunchError, match=r"missing \['--process_id'\]"):
        detect({}, "auto", "10.0.0.2:1234", 2, None)


def test_explicit_variables():
    env = {"JAX_COORDINATOR_ADDRESS": "host-0.svc:8476", "JAX_NUM_PROCESSES": "16"}
    assert detect({**env, "JAX_PROCESS_ID": "5"}) == ProcessGroup("env", "host-0.svc:8476", 16, 5)
    with pytest.raises(LaunchError, match="JAX_PROCESS_ID"):
        detect(env)
    with pytest.raises(LaunchError, match=r"process id 16 is outside 0\.\.15"):
        detect({**env, "JAX_PROCESS_ID": "16"})
    with pytest.raises(LaunchError, match="'two' is not an integer"):
        detect({**env, "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})


def test_a_group_of_one_is_not_initialised():
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    assert detect(env) is None
    assert detect({}, "auto", "h:1", 1, 0) is None


def test_srun_step():
    group = detect(SRUN)
    assert group == ProcessGroup("slurm", f"gpu017:{61440 + 1234567 % 4096}", 4, 3)
    assert detect({**SRUN, "JAX_COORDINATOR_PORT": "9999"}).coordinator_address == "gpu017:9999"


def test_slurm_allocation_without_srun_runs_alone_and_says_so(caplog):
    batch_script = {k: v for k, v in SRUN.items() if not k.startswith("SLURM_STEP")}
    with caplog.at_level(logging.WARNING):
        assert detect(batch_script) is None
    assert "not started by srun" in caplog.text


@pytest.mark.parametrize(
    "nodes, first",
    [("node001", "node001"), ("a,b", "a"), ("n[001-015],h2", "n001"), ("n[7,9-12]", "n7")],
)
def test_first_slurm_host(nodes, first):
    assert first_host(nodes) == first


def test_gke_tpu_workers():
    env = {"TPU_WORKER_HOSTNAMES": "w-0.js,w-1.js,w-2.js,w-3.js", "TPU_WORKER_ID": "2"}
    assert detect(env) == ProcessGroup("gke-tpu", "w-0.js:8476", 4, 2)
    assert detect({"TPU_WORKER_HOSTNAMES": "w-0.js", "TPU_WORKER_ID": "0"}) is None


def test_modes():
    assert detect(SRUN, "off") is None
    assert detect({}, "jax") == ProcessGroup("jax")
    with pytest.raises(LaunchError, match="contradicts"):
        detect({}, "off", "h:1", 2, 0)
    with pytest.raises(LaunchError, match="expected one of"):
        detect({}, "slurm")


def test_bad_coordinator_and_timeouts():
    with pytest.raises(LaunchError, match="is not HOST:PORT"):
        detect({}, "auto", "localhost", 2, 0)
    with pytest.raises(LaunchError, match="heartbeat_timeout=0"):
        Timeouts(heartbeat=0)


def test_srun_with_several_tasks_per_node_gives_each_its_local_accelerator():
    env = {**SRUN, "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_LOCALID": "1"}
    assert detect(env).local_device_ids == (1,)
    assert detect(SRUN).local_device_ids is None  # one task per node: all its devices


def test_jax_mode_keeps_given_flags_and_one_process_needs_no_address():
    assert detect({}, "jax", None, 4, 2) == ProcessGroup("jax", None, 4, 2)
    assert detect({"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None
