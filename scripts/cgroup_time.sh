#!/usr/bin/env bash
# Wall time and CPU seconds of a command's whole process tree (Ray heads, actors, the cells of a
# comparison: everything it starts), read from a cgroup v1 cpuacct group of its own.
#   sudo scripts/cgroup_time.sh NAME COMMAND...     prints: CGTIME NAME rc=.. wall=..s cpu=..s
# The group stays, so another process can read /sys/fs/cgroup/cpuacct/NAME/cpuacct.usage while
# the command runs (scripts/pytest_cpu_profile.py does, per test).
set -u
name=$1
shift
group=/sys/fs/cgroup/cpuacct/$name
mkdir -p "$group" || { echo "no cgroup v1 cpuacct here (needs root)" >&2; exit 2; }
echo 0 >"$group/cpuacct.usage"
start=$(date +%s.%N)
bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$group" "$@"
rc=$?
end=$(date +%s.%N)
cpu=$(cat "$group/cpuacct.usage")
python3 -c "print(f'CGTIME $name rc=$rc wall={$end - $start:.1f}s cpu={$cpu / 1e9:.1f}s')"
exit $rc
