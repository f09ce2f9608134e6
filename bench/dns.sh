#!/usr/bin/env bash
# Cluster DNS side by side: dnsperf against skiff's in-process DNS and against knot serving the
# same names from a static zone, on loopback, one after the other with the same query file.
# Prints qps, average latency and skiff/knot ratios. Needs root (port 53), dnsperf, knot,
# kubectl and dig (`apt-get install dnsperf knot dnsutils`).
#
#   bench/dns.sh                    # 200 Services, 10 s per server
#   SERVICES=1000 SECONDS_PER=20 SKIFF=/work/target/release/skiff bench/dns.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SKIFF="${SKIFF:-${CARGO_TARGET_DIR:-/work/target}/debug/skiff}"
SERVICES="${SERVICES:-200}"
SECONDS_PER="${SECONDS_PER:-10}"
CLIENTS="${CLIENTS:-4}"
SKIFF_IP="${SKIFF_IP:-127.0.201.1}"
KNOT_IP="${KNOT_IP:-127.0.201.2}"
for tool in dnsperf knotd kubectl dig; do
  command -v "$tool" >/dev/null || { echo "bench/dns.sh: $tool is missing" >&2; exit 1; }
done
[ -x "$SKIFF" ] || { echo "bench/dns.sh: no skiff binary at $SKIFF (cargo build first)" >&2; exit 1; }

work="$(mktemp -d /tmp/skiff-dns-bench.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "skiff: $SKIFF ($(case "$SKIFF" in */release/*) echo release;; *) echo debug build;; esac))"
SKIFF_LOG=warn "$SKIFF" server --init --data "$work/skiff" --advertise "$SKIFF_IP" \
  >"$work/skiff.log" 2>&1 &
pids+=($!)
kube=(kubectl --kubeconfig "$work/skiff/admin.kubeconfig" --cache-dir "$work/kube-cache")
for _ in $(seq 100); do
  "${kube[@]}" get namespace default >/dev/null 2>&1 && break
  sleep 0.2
done

# 1. The names: $SERVICES ClusterIP Services and one headless Service with 3 endpoints.
{
  for i in $(seq "$SERVICES"); do
    printf 'apiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: default}\n' "$i"
    printf 'spec: {ports: [{name: http, port: 80}]}\n---\n'
  done
  cat <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: ["10.42.0.5"], hostname: db-0}
- {addresses: ["10.42.0.6"], hostname: db-1}
- {addresses: ["10.42.0.7"], hostname: db-2}
EOF
} >"$work/services.yaml"
"${kube[@]}" apply -f "$work/services.yaml" >/dev/null
"${kube[@]}" get services -n default -o jsonpath='{range .items[*]}{.metadata.name} {.spec.clusterIP}{"\n"}{end}' \
  >"$work/ips"

# 2. The same names as a static zone for knot, and one query file for both.
zone="$work/cluster.local.zone"
queries="$work/queries"
{
  echo '$ORIGIN cluster.local.'
  echo '$TTL 5'
  echo '@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5'
  echo '@ IN NS ns.dns.cluster.local.'
  echo 'ns.dns IN A 10.43.0.10'
  echo 'dns-version IN TXT "1.1.0"'
} >"$zone"
: >"$queries"
while read -r name ip; do
  [ "$ip" = None ] && continue
  echo "$name.default.svc IN A $ip" >>"$zone"
  echo "_http._tcp.$name.default.svc IN SRV 0 100 80 $name.default.svc.cluster.local." >>"$zone"
  echo "$name.default.svc.cluster.local A" >>"$queries"
done <"$work/ips"
for n in 0 1 2; do
  echo "db.default.svc IN A 10.42.0.$((n + 5))" >>"$zone"
  echo "db-$n.db.default.svc IN A 10.42.0.$((n + 5))" >>"$zone"
  echo "_pg._tcp.db.default.svc IN SRV 0 100 5432 db-$n.db.default.svc.cluster.local." >>"$zone"
done
{
  echo "db.default.svc.cluster.local A"
  echo "_pg._tcp.db.default.svc.cluster.local SRV"
  echo "_http._tcp.svc-1.default.svc.cluster.local SRV"
  echo "nope.default.svc.cluster.local A"
  echo "svc-1.default.svc.cluster.local AAAA"
} >>"$queries"

cat >"$work/knot.conf" <<EOF
server:
    listen: $KNOT_IP@53
    rundir: $work/knot-run
database:
    storage: $work/knot-db
log:
  - target: stderr
    any: warning
zone:
  - domain: cluster.local
    storage: $work
    file: cluster.local.zone
EOF
mkdir -p "$work/knot-run" "$work/knot-db"
knotd -c "$work/knot.conf" >"$work/knot.log" 2>&1 &
pids+=($!)

# 3. Both must give the same answers before anything is timed.
for _ in $(seq 100); do
  a="$(dig @"$SKIFF_IP" +short svc-1.default.svc.cluster.local A)"
  b="$(dig @"$KNOT_IP" +short svc-1.default.svc.cluster.local A)"
  [ -n "$a" ] && [ "$a" = "$b" ] && break
  sleep 0.2
done
for q in "svc-$SERVICES.default.svc.cluster.local A" "db.default.svc.cluster.local A" \
  "_pg._tcp.db.default.svc.cluster.local SRV" "nope.default.svc.cluster.local A"; do
  # shellcheck disable=SC2086
  a="$(dig @"$SKIFF_IP" +noall +answer +comments $q | grep -Eo 'status: [A-Z]+|IN.*' | sort)"
  # shellcheck disable=SC2086
  b="$(dig @"$KNOT_IP" +noall +answer +comments $q | grep -Eo 'status: [A-Z]+|IN.*' | sort)"
  if [ "$a" != "$b" ]; then
    echo "answers differ for $q:"; echo "skiff: $a"; echo "knot:  $b"; exit 1
  fi
done
echo "names: $(wc -l <"$work/ips") Services, $(wc -l <"$queries") distinct queries; answers match"

# 4. dnsperf, one server at a time.
run() {
  dnsperf -s "$1" -d "$queries" -l "$SECONDS_PER" -c "$CLIENTS" -Q 1000000 -q 200 2>&1
}
# The first number after the colon on dnsperf's line starting with $2.
parse() { grep -m1 "$2" <<<"$1" | sed -E 's/^[^:]*:[[:space:]]*([0-9.]+).*/\1/'; }
skiff_out="$(run "$SKIFF_IP")"
knot_out="$(run "$KNOT_IP")"
skiff_qps="$(parse "$skiff_out" 'Queries per second')"
knot_qps="$(parse "$knot_out" 'Queries per second')"
skiff_lat="$(parse "$skiff_out" 'Average Latency')"
knot_lat="$(parse "$knot_out" 'Average Latency')"
skiff_lost="$(parse "$skiff_out" 'Queries lost')"
knot_lost="$(parse "$knot_out" 'Queries lost')"
printf '%-6s %12s %16s %8s\n' server qps "avg latency (s)" lost
printf '%-6s %12s %16s %8s\n' skiff "$skiff_qps" "$skiff_lat" "$skiff_lost"
printf '%-6s %12s %16s %8s\n' knot "$knot_qps" "$knot_lat" "$knot_lost"
awk -v s="$skiff_qps" -v k="$knot_qps" 'BEGIN { printf "skiff/knot qps ratio: %.2f\n", s / k }'
