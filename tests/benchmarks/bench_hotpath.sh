#!/usr/bin/env bash
# Per-message cost of our servers and clients against DCMTK's, interleaved round by round.
#
#   tests/benchmarks/bench_hotpath.sh MODE [ROUNDS] [BEFORE_TREE]
#
# MODE:
#   echo      DCMTK echoscu --repeat 20000 on one association into each storescp --ignore
#   echo-trio the same with our storescp on trio
#   ignore    DCMTK storescu, 1000 x 0.5 MiB on one association, into each storescp --ignore
#   disk      the same, written to disk (--output-dir / -od)
#   send      each storescu (ours, DCMTK's) sends the 1000 instances into one DCMTK storescp --ignore
#   syscalls  system calls per C-ECHO and per 0.5 MiB C-STORE of our storescp (strace -c -f)
#
# Each round runs, one after the other: our storescp from BEFORE_TREE (a checkout or `git
# archive` of an older commit, optional), ours from this tree, DCMTK's.  Printed per server:
# the rate (over the client's wall time; DCMTK's client for receiving, start-up included) and
# the server's CPU time (user + system, /proc/PID/stat) per message, which other load on a
# shared machine disturbs far less than the rate.  For `send`: MB/s over the sender's process
# wall time and the sender's CPU time for the whole run (start-up included).
#
# Needs DCMTK (storescp, storescu, echoscu), strace for `syscalls`, bc, /usr/bin/time.  The
# 1000 instances are written once to $BENCH_DATA (default /tmp/asyncdicom-bench-ct).
set -euo pipefail

MODE=${1:?mode: echo, echo-trio, ignore, disk, send or syscalls}
ROUNDS=${2:-3}
BEFORE=${3:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python}
DATA=${BENCH_DATA:-/tmp/asyncdicom-bench-ct}
OUT=$(mktemp -d /tmp/asyncdicom-bench-out.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
TCK=$(getconf CLK_TCK)
export TCP_NODELAY=1 # DCMTK leaves Nagle's algorithm on without it

if [[ ! -d $DATA ]]; then
    PYTHONPATH=$HERE $PY -c "from asyncdicom.storage.synthetic import write_ct_files
write_ct_files('$DATA', 1000, 512 * 1024)"
fi

wait_port() {
    for _ in $(seq 200); do
        (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

BACKEND=asyncio
case $MODE in
    echo | echo-trio) N=20000 OURS_OUT=(--ignore) DCMTK_OUT=(--ignore) ;;
    ignore) N=1000 OURS_OUT=(--ignore) DCMTK_OUT=(--ignore) ;;
    disk) N=1000 OURS_OUT=(--output-dir "$OUT") DCMTK_OUT=(-od "$OUT") ;;
esac
[[ $MODE == echo-trio ]] && BACKEND=trio

# python -m puts the working directory first on sys.path: run each tree from its own root
ours() { # TREE PORT
    cd "$1"
    PYTHONPATH=$1 exec "$PY" -m asyncdicom storescp --backend "$BACKEND" --host 127.0.0.1 \
        --max-pdu 131072 "${OURS_OUT[@]}" --port "$2"
}
dcmtk() { exec storescp +xa -pdu 131072 "${DCMTK_OUT[@]}" "$2"; }

receive_round() { # SERVER TREE -> "rate/s, us CPU/message"
    local port=$((20000 + RANDOM % 20000)) srv c0 c1 s e
    rm -rf "${OUT:?}"/*
    "$1" "$2" "$port" >/dev/null 2>&1 &
    srv=$!
    wait_port "$port"
    sleep 0.2
    c0=$(cpu_ticks $srv)
    s=$(date +%s.%N)
    if [[ $MODE == echo* ]]; then
        echoscu -to 60 127.0.0.1 "$port" --repeat $N >/dev/null 2>&1 || echo "echoscu failed" >&2
    else
        storescu -R +sd -aec ANY-SCP -pdu 131072 127.0.0.1 "$port" "$DATA" >/dev/null 2>&1 ||
            echo "storescu failed" >&2
    fi
    e=$(date +%s.%N)
    c1=$(cpu_ticks $srv)
    kill $srv
    wait $srv 2>/dev/null || true
    printf '%.0f/s, %.0f us CPU' "$(echo "$N / ($e - $s)" | bc -l)" \
        "$(echo "($c1 - $c0) * 1000000 / $TCK / $N" | bc -l)"
}

send_one() { # command... -> "MB/s, ms CPU"
    local s e
    s=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$OUT/time" "$@" >"$OUT/log" 2>&1 || echo "sender failed" >&2
    e=$(date +%s.%N)
    printf '%.0f MB/s, %s ms CPU' "$(echo "524.288 / ($e - $s)" | bc -l)" \
        "$(awk '{printf "%d", ($1 + $2) * 1000}' "$OUT/time")"
}

syscalls() { # TREE WHAT(echo|store) COUNT
    local port=$((20000 + RANDOM % 20000)) srv st
    rm -rf "${OUT:?}"/*
    (cd "$1" && PYTHONPATH=$1 exec "$PY" -m asyncdicom storescp --host 127.0.0.1 --max-pdu 131072 \
        --output-dir "$OUT" --port $port >/dev/null 2>&1) &
    srv=$!
    wait_port $port
    echoscu 127.0.0.1 $port --repeat 20 >/dev/null 2>&1
    strace -c -f -p $srv -o "$OUT/strace" 2>/dev/null &
    st=$!
    sleep 0.5
    if [[ $2 == echo ]]; then
        echoscu 127.0.0.1 $port --repeat "$3" >/dev/null 2>&1
    else
        storescu -R +sd -aec ANY-SCP -pdu 131072 127.0.0.1 $port "$DATA" >/dev/null 2>&1
    fi
    sleep 0.3
    kill -INT $st
    wait $st 2>/dev/null || true
    kill $srv
    wait $srv 2>/dev/null || true
    awk -v n="$3" 'NR > 2 && $4 + 0 > 0 && $NF != "total" && $4 / n >= 0.05 {
        printf "%s %.1f  ", $NF, $4 / n }' "$OUT/strace"
    echo
}

echo "$MODE, $ROUNDS round(s); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    case $MODE in
        echo | echo-trio | ignore | disk)
            line="round $r:"
            [[ -n $BEFORE ]] && line+="  before $(receive_round ours "$BEFORE")"
            line+="  ours $(receive_round ours "$HERE")  DCMTK $(receive_round dcmtk "")"
            ;;
        send)
            port=$((20000 + RANDOM % 20000))
            storescp +xa -pdu 131072 --ignore $port >/dev/null 2>&1 &
            srv=$!
            wait_port $port
            line="round $r:"
            for tree in $BEFORE "$HERE"; do
                label=ours
                [[ $tree == "$BEFORE" ]] && label=before
                line+="  $label $(cd "$tree" && PYTHONPATH=$tree send_one "$PY" -m asyncdicom \
                    storescu 127.0.0.1 $port "$DATA" --called-aet STORESCP)"
            done
            line+="  DCMTK $(send_one storescu -R +sd -aec STORESCP 127.0.0.1 $port "$DATA")"
            kill $srv
            wait $srv 2>/dev/null || true
            ;;
        syscalls)
            line="round $r:"
            for tree in $BEFORE "$HERE"; do
                label=ours
                [[ $tree == "$BEFORE" ]] && label=before
                line+=$'\n'"  $label per C-ECHO: $(syscalls "$tree" echo 3000)"
                line+=$'\n'"  $label per C-STORE (to disk): $(syscalls "$tree" store 1000)"
            done
            ;;
        *)
            echo "unknown mode $MODE" >&2
            exit 2
            ;;
    esac
    echo "$line   (load $(cut -d' ' -f1 /proc/loadavg))"
done
