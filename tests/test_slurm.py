"""hpc.slurm and the sbatch templates against a real 3-node Slurm cluster started by slurm/cluster-up.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpc.errors import HpcError
from hpc.launch import sbatch, slurm

JOB_TIMEOUT_S = 120

# Rank 0 gathers one line per rank (so the ranks really talk across nodes) and writes them to argv[1].
HELLO = textwrap.dedent("""\
    import os, socket, sys
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    line = (f"rank={comm.rank} size={comm.size} host={socket.gethostname()} "
            f"node={os.environ.get('SLURMD_NODENAME')} scaling={os.environ.get('HPC_SCALING')} "
            f"point={os.environ.get('HPC_POINT_ID')}")
    lines = comm.gather(line)
    if comm.rank == 0:
        with open(sys.argv[1], "w") as f:
            f.write("\\n".join(lines) + "\\n")
""")


@pytest.fixture
def jobdir(slurm_cluster, tmp_path: Path) -> Path:
    """A per-test directory with the MPI hello script in it."""
    (tmp_path / "hello.py").write_text(HELLO)
    return tmp_path


def batch_script(path: Path, body: str, *sbatch: str) -> Path:
    """Write a plain batch script with the given #SBATCH options."""
    lines = ["#!/bin/bash", *(f"#SBATCH {opt}" for opt in sbatch), body, ""]
    path.write_text("\n".join(lines))
    return path


def ranks(path: Path) -> list[dict[str, str]]:
    """The `key=value` lines written by HELLO, one dict per rank."""
    return [dict(kv.split("=", 1) for kv in ln.split()) for ln in path.read_text().splitlines()]


def mpi_command(jobdir: Path, out: Path) -> list[str]:
    """An argv that is already "inside MPI": this venv's python running HELLO under mpi4py."""
    return [sys.executable, "-m", "mpi4py", str(jobdir / "hello.py"), str(out)]


def test_cluster_info(slurm_cluster):
    info = slurm.cluster_info(env=slurm_cluster.env)
    assert info == (3, 8, ["debug"])
    assert slurm_cluster.nodes == ["c1", "c2", "c3"]
    with pytest.raises(HpcError, match="no usable nodes in partition nope"):
        slurm.cluster_info("nope", env=slurm_cluster.env)


def test_mpi_job_spans_two_nodes(slurm_cluster, jobdir):
    out = jobdir / "ranks.txt"
    mpirun = sbatch.default_mpirun()
    argv = [mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", *mpi_command(jobdir, out)]
    script = batch_script(jobdir / "mpi.sh", " ".join(argv), "-N 2", "-n 4", f"-o {jobdir}/mpi.log")
    job = slurm.submit(script, env=slurm_cluster.env)
    states = slurm.wait([job], timeout_s=JOB_TIMEOUT_S, env=slurm_cluster.env)
    assert states[job].ok, (states[job], (jobdir / "mpi.log").read_text())
    rows = ranks(out)
    assert sorted(int(r["rank"]) for r in rows) == [0, 1, 2, 3]
    assert {r["size"] for r in rows} == {"4"}
    nodes = {r["node"] for r in rows}
    assert len(nodes) == 2 and nodes <= set(slurm_cluster.nodes), rows
    if slurm_cluster.own_hostnames:
        assert all(r["host"] == r["node"] for r in rows), "each node should have its own hostname"
    assert set(slurm.hostnames(states[job].nodes, env=slurm_cluster.env)) == nodes


def test_failing_job_reports_exit_code(slurm_cluster, jobdir):
    script = batch_script(jobdir / "fail.sh", "echo 'disk on fire' >&2; exit 3", f"-o {jobdir}/fail.log")
    job = slurm.submit(script, env=slurm_cluster.env)
    st = slurm.wait([job], timeout_s=JOB_TIMEOUT_S, env=slurm_cluster.env)[job]
    assert st.state == "FAILED" and st.exit_code == 3 and not st.ok
    msg = slurm.error_line(st)
    assert msg.startswith(f"Slurm job {job} FAILED (exit 3)") and msg.endswith("disk on fire"), msg
    # What wait() falls back to once scontrol has forgotten the job (after MinJobAge): the jobcomp log.
    logged = slurm._jobcomp_states(slurm_cluster.env)[job]
    assert (logged.state, logged.exit_code, logged.nodes) == ("FAILED", 3, st.nodes)


def test_afterok_chain_runs_in_order_and_stops_after_a_failure(slurm_cluster, jobdir):
    env = slurm_cluster.env
    first = slurm.submit(batch_script(jobdir / "a.sh", f"sleep 1; echo a > {jobdir}/a.txt", "-o /dev/null"), env=env)
    second = slurm.submit(batch_script(jobdir / "b.sh", f"cat {jobdir}/a.txt > {jobdir}/b.txt", "-o /dev/null"),
                          dependency=f"afterok:{first}", env=env)
    failing = slurm.submit(batch_script(jobdir / "f.sh", "exit 1", "-o /dev/null"), env=env)
    never = slurm.submit(batch_script(jobdir / "n.sh", f"touch {jobdir}/never.txt", "-o /dev/null"),
                         dependency=f"afterok:{failing}", env=env)
    states = slurm.wait([first, second, failing, never], timeout_s=JOB_TIMEOUT_S, env=env)
    assert states[first].ok and states[second].ok
    assert (jobdir / "b.txt").read_text() == "a\n"  # b started only after a had written its file
    assert states[failing].state == "FAILED"
    assert states[never].state == "CANCELLED" and states[never].reason == "DependencyNeverSatisfied"
    assert not (jobdir / "never.txt").exists()


def test_array_job_gives_one_state_per_task(slurm_cluster, jobdir):
    script = batch_script(jobdir / "arr.sh", f'echo "$SLURM_ARRAY_TASK_ID" > {jobdir}/task-$SLURM_ARRAY_TASK_ID',
                          "-o /dev/null")
    job = slurm.submit(script, array="0-2", env=slurm_cluster.env)
    states = slurm.wait([job], timeout_s=JOB_TIMEOUT_S, env=slurm_cluster.env)
    assert sorted(states) == [f"{job}_0", f"{job}_1", f"{job}_2"]
    assert all(st.ok for st in states.values())
    assert sorted(p.read_text() for p in jobdir.glob("task-*")) == ["0\n", "1\n", "2\n"]


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_rendered_template_submitted_by_hand(slurm_cluster, jobdir, launcher):
    """The dry-run path: a user takes the rendered script and runs plain `sbatch script.sh`."""
    out = jobdir / "ranks.txt"
    text = sbatch.render("weak", job_name=f"hpc-{launcher}", nodes=2, ntasks_per_node=2, time="00:05:00",
                        workdir=jobdir, output="job-%j.out", error="job-%j.err", launcher=launcher,
                        command=mpi_command(jobdir, out), env={"HPC_POINT_ID": "np4'q"})
    assert "--partition" not in text and "--account" not in text
    script = sbatch.write_script(jobdir / "point.sbatch", text)
    proc = slurm_cluster.run("sbatch", str(script), cwd="/")
    assert proc.returncode == 0, proc.stderr
    job = re.fullmatch(r"Submitted batch job (\d+)", proc.stdout.strip()).group(1)
    st = slurm.wait([job], timeout_s=JOB_TIMEOUT_S, env=slurm_cluster.env)[job]
    err = (jobdir / f"job-{job}.err").read_text()
    assert st.ok, (st, err)
    assert f"4 ranks via {launcher}" in err
    rows = ranks(out)
    assert sorted(int(r["rank"]) for r in rows) == [0, 1, 2, 3]
    assert len({r["node"] for r in rows}) == 2
    assert {r["scaling"] for r in rows} == {"weak"} and {r["point"] for r in rows} == {"np4'q"}
    assert (jobdir / f"job-{job}.out").exists()


def test_wait_times_out_then_cancel(slurm_cluster, jobdir):
    env = slurm_cluster.env
    job = slurm.submit(batch_script(jobdir / "long.sh", "sleep 300", "-o /dev/null"), env=env)
    with pytest.raises(slurm.SlurmTimeout, match=f"not finished after 0.5s: {job} ") as exc:
        slurm.wait([job], timeout_s=0.5, poll_s=0.1, env=env)
    assert exc.value.states[job].state in ("PENDING", "CONFIGURING", "RUNNING")
    slurm.cancel([job], env=env)
    st = slurm.wait([job], timeout_s=JOB_TIMEOUT_S, env=env)[job]
    assert st.state == "CANCELLED" and not st.ok
    slurm.cancel([job], env=env)  # cancelling a finished job is not an error


def test_unknown_job_is_reported_not_waited_for(slurm_cluster):
    st = slurm.wait(["987654"], timeout_s=JOB_TIMEOUT_S, env=slurm_cluster.env)["987654"]
    assert st.state == "UNKNOWN" and st.done and not st.ok


def test_submit_errors_are_one_line(slurm_cluster, jobdir):
    bad = jobdir / "bad.sh"
    bad.write_text("echo no shebang\n")
    with pytest.raises(HpcError, match=r"^sbatch bad.sh failed: .*") as exc:
        slurm.submit(bad, env=slurm_cluster.env)
    assert "\n" not in str(exc.value)
    with pytest.raises(HpcError, match="sbatch script not found"):
        slurm.submit(jobdir / "missing.sh", env=slurm_cluster.env)
    # Larger than the cluster (3 nodes x 8 CPUs): refused at once, not left pending (EnforcePartLimits).
    for option, why in (("-N 4", "Node count specification invalid"), ("-n 25", "More processors requested")):
        script = batch_script(jobdir / "big.sh", "true", option)
        with pytest.raises(HpcError, match=f"^sbatch big.sh failed: .*{why}"):
            slurm.submit(script, env=slurm_cluster.env)


# ---- no cluster needed -----------------------------------------------------------------------------

def test_require_sbatch_without_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HpcError, match="^sbatch not found"):
        slurm.require_sbatch()
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(HpcError, match="^sbatch not found"):
        slurm.submit(script)


@pytest.mark.parametrize("name", ["strong", "weak"])
def test_render_fills_every_placeholder(name, tmp_path):
    text = sbatch.render(name, job_name="j", nodes="2", ntasks_per_node=3, partition="gpu", account="proj",
                        workdir=tmp_path, output="o.txt", command="hpc bench collective --np 6",
                        env={"HPC_SWEEP_ID": "s1", "HPC_NODES": 2}, mpirun="/opt/my mpi/mpirun")
    assert not re.search(r"\$\{[a-z_]+\}", text), "an unfilled placeholder"
    assert "\n\n\n" not in text, "an empty optional block left a gap"
    for option in ("--job-name=j", "--nodes=2", "--ntasks-per-node=3", "--partition=gpu", "--account=proj",
                   f"--chdir={tmp_path}", f"--output={tmp_path}/o.txt"):
        assert f"#SBATCH {option}\n" in text
    assert "--time" not in text and "--error" not in text
    assert f"export HPC_SCALING={name}\n" in text
    assert "export HPC_SWEEP_ID=s1\nexport HPC_NODES=2\n" in text
    assert "LAUNCH=('/opt/my mpi/mpirun' -n" in text
    assert text.rstrip().endswith('"${LAUNCH[@]}" hpc bench collective --np 6')
    result = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("ranks_per_node, cpus_on_node, oversubscribe", [(2, 8, False), (4, 8, True), (4, 2, True)])
def test_rendered_script_oversubscribes_only_beyond_the_cores(tmp_path, ranks_per_node, cpus_on_node, oversubscribe):
    """No hard-coded --oversubscribe: the script compares ranks per node with min(nproc, SLURM_CPUS_ON_NODE)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nproc").write_text("#!/bin/sh\necho 2\n")  # a 2-core node, whatever this machine has
    (bindir / "mpirun").write_text('#!/bin/sh\necho "$@" > "$LAUNCHED"\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    text = sbatch.render("strong", job_name="j", nodes=1, ntasks_per_node=ranks_per_node, workdir=tmp_path,
                        command=["./prog", "a b"], mpirun=str(bindir / "mpirun"), mpirun_flags=["--map-by", "core"],
                        sbatch_lines=["#SBATCH --gres=gpu:4"], before=["export SITE=1", "test -n \"$SITE\""])
    assert "#SBATCH --gres=gpu:4\n" in text and "--oversubscribe --bind-to none); fi" in text
    script = sbatch.write_script(tmp_path / "s.sbatch", text)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SLURM_NTASKS": str(ranks_per_node), "SLURM_JOB_ID": "1",
           "SLURM_JOB_NODELIST": "c1", "SLURM_CPUS_ON_NODE": str(cpus_on_node),
           "LAUNCHED": str(tmp_path / "launched")}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    launched = (tmp_path / "launched").read_text().split()
    assert ("--oversubscribe" in launched) == oversubscribe, launched
    assert launched[-4:] == ["core", "./prog", "a", "b"] and "--map-by" in launched


def test_a_failing_before_command_stops_the_job_with_a_clear_line(tmp_path):
    text = sbatch.render("weak", job_name="j", nodes=1, ntasks_per_node=1, workdir=tmp_path, command="true",
                        before=["module load nonexistent/1.0"])
    script = sbatch.write_script(tmp_path / "s.sbatch", text)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "SLURM_NTASKS": "1"})
    assert proc.returncode == 1
    assert "hpc: error: command before the launch failed: module load nonexistent/1.0" in proc.stderr


def test_sinfo_without_a_controller_names_the_likely_cause(tmp_path):
    if not shutil.which("sinfo"):
        pytest.skip("Slurm client tools not installed")
    conf = dead_controller_conf(tmp_path)
    with pytest.raises(HpcError, match=r"^cannot reach a Slurm controller \(is slurmctld running\? "
                                       rf"SLURM_CONF={re.escape(str(conf))}\)"):
        slurm.cluster_info(env=dict(os.environ, SLURM_CONF=str(conf)))


def dead_controller_conf(tmp_path: Path) -> Path:
    """A slurm.conf whose controller port nobody listens on."""
    conf = tmp_path / "dead.conf"
    conf.write_text("ClusterName=dead\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n"
                    "CredType=cred/none\nMessageTimeout=2\n"
                    "NodeName=d1 CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=ALL Default=YES\n")
    return conf


@pytest.mark.parametrize("values, message", [
    (dict(nodes=2, ntasks_per_node=1), "needs a value for: command, job_name"),
    (dict(job_name="j", nodes=0, ntasks_per_node=1, command="x"), "nodes must be a positive integer"),
    (dict(job_name="j", nodes=1, ntasks_per_node="two", command="x"), "ntasks_per_node must be a positive"),
    (dict(job_name="j", nodes=1, ntasks_per_node=1, command="x", launcher="ssh"), "launcher must be"),
    (dict(job_name="my job", nodes=1, ntasks_per_node=1, command="x"), "must not contain spaces"),
    (dict(job_name="j", nodes=1, ntasks_per_node=1, command="x", nodez=2), "no placeholder for: nodez"),
    (dict(job_name="j", nodes=1, ntasks_per_node=1, command="x", env={"A-B": 1}), "environment variable"),
])
def test_render_rejects_bad_values(values, message):
    with pytest.raises(HpcError, match=message):
        sbatch.render("strong", **values)


def test_render_missing_template():
    with pytest.raises(HpcError, match="cannot read sbatch template 'nope'"):
        sbatch.render("nope", job_name="j")
