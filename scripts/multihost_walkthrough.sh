#!/usr/bin/env bash
# docs/multihost.md section 9, as one script: a throw-away PostgreSQL server, the daemon,
# two agents on this machine, two real tuning jobs (the tiny sample) sharing one tuning
# database; one agent is killed and its job finishes on the other.
#   bash scripts/multihost_walkthrough.sh          (about 2 minutes on 2 cores)
set -euo pipefail
export SIMPLETVM_EXTRAS="${SIMPLETVM_EXTRAS:-dev,postgres}"
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

# 1. a PostgreSQL server in a temporary folder, on a unix socket only
bindir=
for dir in "$(dirname "$(command -v initdb || echo /none/initdb)")" /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/createdb" ]; then bindir=$dir; break; fi
done
[ -n "$bindir" ] || { echo "PostgreSQL's initdb and createdb are not installed" >&2; exit 2; }
work=$(mktemp -d /tmp/sched-walkthrough-XXXXXX)
as_user=()
if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
    chown nobody "$work"; as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
"${as_user[@]}" "$bindir/initdb" -D "$work/data" -A trust -U sched -E UTF8 >/dev/null
"${as_user[@]}" "$bindir/pg_ctl" -D "$work/data" -w -l "$work/server.log" \
    -o "-c listen_addresses='' -c unix_socket_directories=$work" start >/dev/null
for db in sched tuning; do "$bindir/createdb" -h "$work" -U sched "$db"; done
export XDG_STATE_HOME="$work/state"            # sched's local files, away from yours
export SCHED_DB="postgresql://sched@/sched?host=$work"    # the registry
TUNING="postgresql://sched@/tuning?host=$work"             # the shared tuning database
cleanup() {
    kill "${agents[@]}" 2>/dev/null || true
    sched stop >/dev/null 2>&1 || true
    "${as_user[@]}" "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null || true
    rm -rf "$work"
}
agents=()
trap cleanup EXIT

# 2. the daemon (no jobs of its own) and two agents, box-a and box-b
sched start --no-local-jobs --host-timeout 5
sched agent --name box-a --resource cpu=1 --resource cpu-device=1 >"$work/box-a.log" 2>&1 &
agents+=($!)
sched agent --name box-b --resource cpu=1 --resource cpu-device=1 >"$work/box-b.log" 2>&1 &
agents+=($!)
sleep 3

# 3. two real tuning jobs
python -c "from simpletvm.samples import write_sample; write_sample('tiny', '$work/tiny.onnx')"
a=$(sched submit "$work/tiny.onnx" --trials 32 --per-round 8 --tuning-db "$TUNING" --json \
    | python -c "import json,sys; print(json.load(sys.stdin)['id'])")
b=$(sched submit "$work/tiny.onnx" --trials 32 --per-round 8 --seed 1 --tuning-db "$TUNING" \
    --json | python -c "import json,sys; print(json.load(sys.stdin)['id'])")
until sched jobs --json | python -c "
import json, sys
jobs = json.load(sys.stdin)
sys.exit(0 if len({j['host'] for j in jobs if j['state'] == 'running'}) == 2 else 1)"; do
    sleep 0.5
done
sched status                                   # the two jobs, on box-a and box-b

# 4. kill box-a: after the host timeout its job is requeued, and box-b finishes it
victim=$(sched jobs --json | python -c "
import json, sys
print(next(j['id'] for j in json.load(sys.stdin) if j['host'] == 'box-a'))")
kill -9 "${agents[0]}"
echo "killed agent box-a (job $victim was running there)"
for id in "$a" "$b"; do
    until [ "$(sched jobs --all --json | python -c "
import json, sys
print(next(j['state'] for j in json.load(sys.stdin) if j['id'] == $id))")" = done ]; do
        sleep 1
    done
done
sched status
sched result "$victim"
