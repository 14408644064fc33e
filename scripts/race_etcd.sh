#!/usr/bin/env bash
# The side-by-side race: the same closed-loop remote write workload against a 3-process
# pontoon cluster and a 3-member etcd cluster, both on loopback, durable, with TLS; runs
# alternate between the two. For each client count it prints writes/s, p50/p99/p99.9 latency
# and the three server processes' CPU seconds per 1k writes, and the ratio pontoon / etcd.
#
#   scripts/race_etcd.sh [--clients "1 256 1024"] [--duration 10] [--rounds 1]
#                        [--value-bytes 256] [--connections 4] [--etcd-plain] [--no-build]
#                        [--out FILE] [--pontoon-only] [--restart-node-at SECS]
#
# --etcd-plain  also runs etcd without TLS (client and peer traffic in the clear).
# --no-build    uses the binaries already built (target/release/pontoon and
#               tools/etcd-load/target/release/etcd-load, or $PONTOON_BIN / $ETCD_LOAD_BIN).
# --out FILE    keeps every run's JSON line (the temporary directory is removed on exit).
# --pontoon-only runs only the pontoon side (no etcd, no etcd-load): the client-robustness
#               runs of the README (failed requests and p99.9 / p99 at 1,024 clients).
# --restart-node-at SECS  SIGKILLs pontoon node 2 SECS into each load window and starts it
#               again 1 s later, from its data directory (clients keep their connections).
#
# Installs etcd-server (and protobuf-compiler, which etcd-load's gRPC build needs) with
# apt-get where missing. Both systems share the machine's disk and cores with the load
# generator: figures are for comparing, not for sizing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENT_COUNTS="1 256 1024"
DURATION=10
ROUNDS=1
VALUE_BYTES=256
CONNECTIONS=4
ETCD_PLAIN=0
BUILD=1
OUT=""
PONTOON_ONLY=0
RESTART_AT=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients) CLIENT_COUNTS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --value-bytes) VALUE_BYTES="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --etcd-plain) ETCD_PLAIN=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --pontoon-only) PONTOON_ONLY=1; shift ;;
        --restart-node-at) RESTART_AT="$2"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "race: $*" >&2; }

# --- tools ---------------------------------------------------------------------------------
missing=()
[[ $PONTOON_ONLY == 1 ]] || command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [[ $BUILD == 1 && $PONTOON_ONLY == 0 ]] && ! command -v protoc >/dev/null; then missing+=(protobuf-compiler); fi
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PONTOON="${PONTOON_BIN:-$ROOT/target/release/pontoon}"
ETCD_LOAD="${ETCD_LOAD_BIN:-$ROOT/tools/etcd-load/target/release/etcd-load}"
if [[ $BUILD == 1 ]]; then
    log "building pontoon (release)"
    (cd "$ROOT" && cargo build --release -q -p pontoon-cli)
    if [[ $PONTOON_ONLY == 0 ]]; then
        log "building etcd-load (release, its own workspace)"
        (cd "$ROOT/tools/etcd-load" && cargo build --release -q)
    fi
fi
BINS=("$PONTOON")
[[ $PONTOON_ONLY == 1 ]] || BINS+=("$ETCD_LOAD")
for bin in "${BINS[@]}"; do
    [[ -x $bin ]] || { echo "race: $bin is missing (build it, or drop --no-build)" >&2; exit 1; }
done

# --- scratch space, and everything we start is stopped on exit ------------------------------
TMP="$(mktemp -d -t pontoon-race.XXXXXX)"
PIDS=()
stop_servers() {
    # A node restarted mid-run (--restart-node-at) left its pid here.
    if [[ -s "$TMP/restarted.pid" ]]; then PIDS+=("$(cat "$TMP/restarted.pid")"); : >"$TMP/restarted.pid"; fi
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() { stop_servers; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
RESULTS="$TMP/results.jsonl"
: >"$RESULTS"

# Ports: a base drawn from our pid so two races (or a test suite) rarely collide.
BASE=$((20000 + ($$ % 2000) * 10))

wait_ready() { # url curl-args... : until it answers 200, or fail after 60 s
    local url="$1"; shift
    for _ in $(seq 600); do
        if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "race: $url never became ready; logs in $TMP" >&2
    tail -n 20 "$TMP"/*.log >&2 || true
    return 1
}

# Sum of a Prometheus counter over all its label sets, across the given /metrics URLs.
scrape() { # name "curl args" url...
    local name="$1" curl_args="$2"; shift 2
    local url
    for url in "$@"; do
        # shellcheck disable=SC2086 # curl_args is a list of words on purpose
        curl -fsS $curl_args "$url" 2>/dev/null || true
    done | awk -v n="$name" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }'
}

# The tool's JSON line, with the servers' fsyncs and peer bytes per write over the run, from
# their /metrics read before (FSYNC0, PEER0) and after; appended to the results.
record() { # label fsyncs-after peer-bytes-after
    python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
r["system"] = sys.argv[1]
fsyncs, peer = int(sys.argv[2]) - int(sys.argv[4]), int(sys.argv[3]) - int(sys.argv[5])
w = r["writes"]
r["server_fsyncs_per_1k_writes"] = fsyncs * 1000 / w if w else None
r["peer_bytes_per_write"] = peer / w if w else None
print(json.dumps(r))' "$1" "$2" "$3" "$FSYNC0" "$PEER0" | tee -a "$RESULTS" >&2
}

# --- pontoon: certificates once, a fresh cluster per run ----------------------------------
PCERTS="$TMP/pontoon-certs"
"$PONTOON" certs init --dir "$PCERTS" >/dev/null
"$PONTOON" certs issue --dir "$PCERTS" --client admin --role admin >/dev/null
for i in 1 2 3; do
    "$PONTOON" certs issue --dir "$PCERTS" --node "$i" --san 127.0.0.1 >/dev/null
done

run_pontoon() { # clients
    local clients="$1" dir="$TMP/pontoon" nodes="" args=() pids=()
    rm -rf "$dir" && mkdir -p "$dir"
    for i in 1 2 3; do nodes+="[[nodes]]"$'\n'"id = $i"$'\n'"addr = \"127.0.0.1:$((BASE + i))\""$'\n'; done
    for i in 1 2 3; do
        # Durable by default: every acknowledged write was fsynced by a quorum.
        cat >"$dir/node-$i.toml" <<EOF
node_id = $i
listen = "127.0.0.1:$((BASE + i))"
data_dir = "$dir/data-$i"

[certs]
ca = "$PCERTS/ca.pem"
cert = "$PCERTS/node-$i.pem"
key = "$PCERTS/node-$i.key"

[routing]
replication = 3

$nodes
EOF
        RUST_LOG=warn "$PONTOON" node --config "$dir/node-$i.toml" >"$TMP/pontoon-$i.log" 2>&1 &
        PIDS+=($!)
        pids+=(--server-pid "$!")
        args+=(--node "127.0.0.1:$((BASE + i))")
    done
    # /ready (on the node's port, over TCP) answers 200 once the node's groups have leaders.
    for i in 1 2 3; do wait_ready "http://127.0.0.1:$((BASE + i))/ready"; done
    local metrics=() fs=pontoon_storage_fsyncs_total peer=pontoon_transport_sent_bytes_total
    for i in 1 2 3; do metrics+=("http://127.0.0.1:$((BASE + i))/metrics"); done
    log "pontoon, $clients clients, ${DURATION}s"
    FSYNC0=$(scrape $fs "" "${metrics[@]}"); PEER0=$(scrape $peer "" "${metrics[@]}")
    if [[ -n $RESTART_AT ]]; then
        local victim=${PIDS[${#PIDS[@]}-2]}  # node 2
        (
            sleep "$RESTART_AT"
            log "SIGKILL node 2, restart in 1 s"
            kill -KILL "$victim" 2>/dev/null || true
            sleep 1
            RUST_LOG=warn "$PONTOON" node --config "$dir/node-2.toml" >>"$TMP/pontoon-2.log" 2>&1 &
            echo $! >"$TMP/restarted.pid"
        ) &
    fi
    "$PONTOON" load "${args[@]}" --certs "$PCERTS" --clients "$clients" \
        --connections "$CONNECTIONS" --duration "$DURATION" --value-bytes "$VALUE_BYTES" \
        "${pids[@]}" --json >"$TMP/load.json"
    record pontoon "$(scrape $fs "" "${metrics[@]}")" "$(scrape $peer "" "${metrics[@]}")" <"$TMP/load.json"
    stop_servers
}

# --- etcd: openssl certificates with IP SANs, a fresh cluster per run ---------------------
ECERTS="$TMP/etcd-certs"
mkdir -p "$ECERTS"
(
    cd "$ECERTS"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=race etcd CA" -keyout ca.key -out ca.pem 2>/dev/null
    for name in server client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$name.ext"
        openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    done
)

run_etcd() { # clients tls(1|0)
    local clients="$1" tls="$2" dir="$TMP/etcd" scheme=https cluster="" args=() pids=()
    local sec=() ctl=() label="etcd"
    [[ $tls == 1 ]] || { scheme=http; label="etcd-plain"; }
    rm -rf "$dir" && mkdir -p "$dir"
    for i in 1 2 3; do cluster+="e$i=$scheme://127.0.0.1:$((BASE + 200 + i)),"; done
    if [[ $tls == 1 ]]; then
        sec=(--cert-file "$ECERTS/server.pem" --key-file "$ECERTS/server.key"
            --client-cert-auth --trusted-ca-file "$ECERTS/ca.pem"
            --peer-cert-file "$ECERTS/server.pem" --peer-key-file "$ECERTS/server.key"
            --peer-client-cert-auth --peer-trusted-ca-file "$ECERTS/ca.pem")
        ctl=(--cacert "$ECERTS/ca.pem" --cert "$ECERTS/client.pem" --key "$ECERTS/client.key")
        args=(--ca "$ECERTS/ca.pem" --cert "$ECERTS/client.pem" --key "$ECERTS/client.key")
    fi
    for i in 1 2 3; do
        local client_url="$scheme://127.0.0.1:$((BASE + 100 + i))"
        # etcd fsyncs its WAL before acknowledging by default: durable like pontoon.
        etcd --name "e$i" --data-dir "$dir/e$i" \
            --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
            --listen-peer-urls "$scheme://127.0.0.1:$((BASE + 200 + i))" \
            --initial-advertise-peer-urls "$scheme://127.0.0.1:$((BASE + 200 + i))" \
            --initial-cluster "${cluster%,}" --initial-cluster-state new \
            --initial-cluster-token race --log-level warn "${sec[@]}" \
            >"$TMP/etcd-$i.log" 2>&1 &
        PIDS+=($!)
        pids+=(--server-pid "$!")
        args+=(--endpoint "$client_url")
    done
    for i in 1 2 3; do wait_ready "$scheme://127.0.0.1:$((BASE + 100 + i))/health" "${ctl[@]}"; done
    # etcd's WAL fsyncs (its acknowledgement waits on them) and its raft traffic to peers.
    local metrics=() fs=etcd_disk_wal_fsync_duration_seconds_count
    local peer=etcd_network_peer_sent_bytes_total
    for i in 1 2 3; do metrics+=("$scheme://127.0.0.1:$((BASE + 100 + i))/metrics"); done
    log "$label, $clients clients, ${DURATION}s"
    FSYNC0=$(scrape $fs "${ctl[*]}" "${metrics[@]}"); PEER0=$(scrape $peer "${ctl[*]}" "${metrics[@]}")
    "$ETCD_LOAD" "${args[@]}" --clients "$clients" --connections "$CONNECTIONS" \
        --duration "$DURATION" --value-bytes "$VALUE_BYTES" "${pids[@]}" --json >"$TMP/load.json"
    record "$label" "$(scrape $fs "${ctl[*]}" "${metrics[@]}")" \
        "$(scrape $peer "${ctl[*]}" "${metrics[@]}")" <"$TMP/load.json"
    stop_servers
}

# --- the race: per client count, rounds alternate which system goes first -----------------
for clients in $CLIENT_COUNTS; do
    for round in $(seq "$ROUNDS"); do
        if [[ $PONTOON_ONLY == 1 ]]; then
            run_pontoon "$clients"
        elif (( round % 2 == 1 )); then
            run_pontoon "$clients"; run_etcd "$clients" 1
        else
            run_etcd "$clients" 1; run_pontoon "$clients"
        fi
        if [[ $ETCD_PLAIN == 1 && $PONTOON_ONLY == 0 ]]; then run_etcd "$clients" 0; fi
    done
done

[[ -z $OUT ]] || cp "$RESULTS" "$OUT"

# --- the table: medians over rounds, ratios pontoon / etcd --------------------------------
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(system, clients, get):
    vals = [get(r) for r in rows if r["system"] == system and r["clients"] == clients]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
metrics = [
    ("writes/s", lambda r: r["writes_per_sec"], "{:.0f}"),
    ("p50 ms", lambda r: r["latency_us"]["p50"] / 1000, "{:.2f}"),
    ("p99 ms", lambda r: r["latency_us"]["p99"] / 1000, "{:.2f}"),
    ("p99.9 ms", lambda r: r["latency_us"]["p999"] / 1000, "{:.2f}"),
    ("CPU s/1k writes", lambda r: r.get("server_cpu_sec_per_1k"), "{:.3f}"),
    ("fsyncs/1k writes", lambda r: r.get("server_fsyncs_per_1k_writes"), "{:.0f}"),
    ("peer bytes/write", lambda r: r.get("peer_bytes_per_write"), "{:.0f}"),
    ("failed", lambda r: r["failed"], "{:.0f}"),
]
others = [s for s in ("etcd", "etcd-plain") if any(r["system"] == s for r in rows)]
for clients in sorted({r["clients"] for r in rows}):
    head = ["", "pontoon"] + others + [f"pontoon/{o}" for o in others]
    print(f"\n{clients} closed-loop clients")
    print(f"{head[0]:<16}" + "".join(f"{h:>20}" for h in head[1:]))
    for name, get, fmt in metrics:
        p = med("pontoon", clients, get)
        cells = [name, "-" if p is None else fmt.format(p)]
        ratios = []
        for o in others:
            v = med(o, clients, get)
            cells.append("-" if v is None else fmt.format(v))
            ratios.append("-" if p is None or not v else f"{p / v:.2f}x")
        cells += ratios
        print(f"{cells[0]:<16}" + "".join(f"{c:>20}" for c in cells[1:]))
EOF
