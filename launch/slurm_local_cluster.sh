#!/bin/bash
# Starts a one-machine Slurm cluster (Debian's slurm-wlm and munge) for trying
# launch/slurm.sbatch without a real cluster; CI uses it to run that script for real.
#
#   source <(bash launch/slurm_local_cluster.sh [DIR])   # exports SLURM_CONF
#
# Needs root (apt-get, munged, slurmd). Installs the packages if missing, writes
# DIR/slurm.conf (default /tmp/clipjax-slurm) for this host with all its CPUs, starts
# munged, slurmctld and slurmd, and waits until the node is idle. Idempotent.
set -euo pipefail
DIR=${1:-/tmp/clipjax-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  install=(apt-get install -y -q --no-install-recommends slurm-wlm munge)
  export DEBIAN_FRONTEND=noninteractive
  "${install[@]}" >&2 || { apt-get update -q >&2 && "${install[@]}" >&2; }
fi
mkdir -p "$DIR"/{state,spool,log}
cat > "$DIR/slurm.conf" <<CONF
ClusterName=clipjax-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$DIR/slurm.conf

if ! munge -n >/dev/null 2>&1; then
  test -f /etc/munge/munge.key || mungekey --create >&2
  mkdir -p /run/munge && chown munge:munge /run/munge
  munged --force >&2
fi
pgrep -x slurmctld >/dev/null || slurmctld -c >&2
pgrep -x slurmd >/dev/null || slurmd >&2
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; see $DIR/log" >&2
exit 1
