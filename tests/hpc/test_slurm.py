"""hpc.slurm: every SLURM_* variable read in one place, batched and cached squeue, partition resources."""

from __future__ import annotations

import subprocess
import time

import pytest

from dualseg.errors import InputError
from hpc import slurm
from hpc.slurm import SlurmEnv, time_to_minutes


@pytest.mark.parametrize("value, minutes", [(90, 90), ("30", 30), ("1:30:00", 90), ("2-00:00", 2880), ("0:30", 1),
                                            ("10:00", 10)])
def test_time_syntax(value: str, minutes: int) -> None:
    assert time_to_minutes(value) == minutes


def test_bad_time_names_the_option() -> None:
    with pytest.raises(InputError, match="--eval-time: cannot parse"):
        time_to_minutes("soon", "--eval-time")


def test_environment_of_an_array_task() -> None:
    env = SlurmEnv.read({"SLURM_JOB_ID": "105", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "5",
                         "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
                         "SLURMD_NODENAME": "n2", "SLURM_RESTART_COUNT": "2"})
    assert env.in_job and env.label == "100_5" and env.state_key == "100_5"
    assert (env.procid, env.localid, env.ntasks, env.nnodes, env.restart_count) == (3, 1, 4, 2, 2)
    plain = SlurmEnv.read({"SLURM_JOB_ID": "7"})
    assert plain.label == "7" and plain.state_key == "7_0"
    assert not SlurmEnv.read({}).in_job and SlurmEnv.read({}).label.startswith("local-")


@pytest.mark.slurm
def test_squeue_is_one_batched_cached_call_and_tolerates_gone_jobs(slurm_env) -> None:
    out = subprocess.run(["sbatch", "--parsable", "--job-name=dualseg-squeue-test", "--wrap", "sleep 30",
                          f"--partition={slurm_env['partition']}", "--output=/dev/null"],
                         capture_output=True, text=True, timeout=60, check=True)
    job = out.stdout.strip().split(";")[0]
    try:
        states = slurm.squeue_states([job, "999999"], max_age_s=0)  # one id long gone: the other still answers
        assert states.get(job) in slurm.QUEUED_STATES and "999999" not in states
        assert slurm.any_queued([job])
        before = slurm.squeue_states([job, "999999"], max_age_s=0)  # the job may have started meanwhile
        subprocess.run(["scancel", job], timeout=30, check=True)
        assert slurm.squeue_states([job, "999999"]) == before  # cached for a few seconds
        deadline = time.monotonic() + 30
        while slurm.any_queued([job]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not slurm.any_queued([job])
    finally:
        subprocess.run(["scancel", job], timeout=30)


@pytest.mark.slurm
def test_squeue_asks_for_the_study_s_jobs_only_and_a_failure_is_unknown(slurm_env, tmp_path) -> None:
    out = subprocess.run(["sbatch", "--parsable", "--job-name=dualseg-mine", "--wrap", "sleep 30",
                          f"--partition={slurm_env['partition']}", "--output=/dev/null"],
                         capture_output=True, text=True, timeout=60, check=True)
    job = out.stdout.strip().split(";")[0]
    try:
        assert job in slurm.squeue_listing(["dualseg-mine"], max_age_s=0)
        assert slurm.squeue_states([job], max_age_s=0, names=["dualseg-other"]) == {}  # another study's name
        (tmp_path / "broken.conf").write_text("")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(tmp_path / "broken.conf"))  # the real squeue, failing at once
            assert slurm.squeue_states([job], max_age_s=0, names=["dualseg-mine"]) is None
            assert slurm.any_queued([job], names=["dualseg-mine"]) is None  # unknown, not "gone"
    finally:
        subprocess.run(["scancel", job], timeout=30)


@pytest.mark.slurm
def test_partition_resources_honour_max_cpus_per_node(slurm_env) -> None:
    assert slurm.partition_resources(slurm_env["partition"]).cpus >= 2
    assert slurm.partition_resources("one").cpus == 1  # tests/cluster/slurm.conf.in: MaxCPUsPerNode=1
    with pytest.raises(InputError, match="--partition"):
        slurm.partition_resources("nosuchpartition")
