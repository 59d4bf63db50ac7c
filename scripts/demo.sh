#!/usr/bin/env bash
# The main job: build Sluice, start a local lab, run a small demo application and show the
# pods talking over IPv4 and IPv6 through the eBPF datapath, a Service and a NetworkPolicy.
# Run as root on Debian.
#   scripts/demo.sh          demo, then remove the lab
#   scripts/demo.sh --keep   leave the lab up to explore (remove it with: sluice down)
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1

bash scripts/install-deps.sh
echo "==> building (release)"
cargo build --release --bins --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
sluice() { "$bin/sluice" "$@"; }
export SLUICE_LAB=demo

if [ -d /run/sluice/labs/demo ]; then sluice down || true; fi
[ $keep = 1 ] || trap 'echo "==> removing the lab"; sluice down' EXIT

echo "==> starting the lab"
sluice up
echo "==> deploying the demo application (examples/demo.yaml)"
sluice apply -f examples/demo.yaml
echo
sluice get pods -n demo -o wide
echo
sluice endpoint list
echo
ip_of() { sluice get pods -n demo -o wide | awk -v pod="$1" -v col="$2" '$1 == pod { print $col }'; }
server4=$(ip_of web 3); server6=$(ip_of web 6); bulk4=$(ip_of bulk 3)

echo "==> client -> web over IPv4 ($server4) and IPv6 ($server6)"
for i in 1 2 3 4 5 6 7 8 9 10; do
  sluice exec client -n demo -- nc -z -w 1 "$server4" 8080 && break; sleep 0.3
done
sluice exec client -n demo -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $server4 8080 | tail -n 1"
sluice exec client -n demo -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $server6 8080 | tail -n 1"
echo "==> the web Service: ClusterIPs balanced at connect() by the socket-LB hooks"
sluice get services -n demo
svc4=$(sluice get services -n demo | awk '$1 == "web" { split($3, ips, ","); print ips[1] }')
for i in 1 2 3 4; do
  sluice exec client -n demo -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $svc4 80 | tail -n 1"
done
echo "==> the NodePort from the lab's external client (a machine on the nodes' network)"
sluice exec --external -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 198.18.0.10 30080 | tail -n 1"
echo
sluice service list
echo
echo "==> ping over both families"
sluice exec client -n demo -- ping -c 3 -i 0.2 "$server4" | tail -n 2
sluice exec client -n demo -- ping -6 -c 3 -i 0.2 "$server6" | tail -n 2
echo "==> throughput pod to pod (iperf3, 3 s)"
sluice exec client -n demo -- iperf3 -c "$bulk4" -t 3 | grep -E "sender|receiver"
echo
echo "==> the node's forwarding counter did not move: pod traffic skipped the host stack"
ip netns exec sluice-demo-node0 awk '/^Ip:/ {getline; print "IpForwDatagrams =", $7}' /proc/net/snmp
echo
echo "==> network policy (examples/policy.yaml): only the client may reach web, on its http port"
sluice apply -f examples/policy.yaml
sleep 0.5
sluice exec client -n demo -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $server4 8080 | tail -n 1"
if sluice exec bulk -n demo -- nc -z -w 1 "$server4" 8080; then echo "bulk -> web: connected (unexpected)"; else echo "bulk -> web: refused by policy"; fi
sluice policy trace --from demo/bulk --to demo/web --port 8080
sluice observe --verdict DROPPED --last 1
echo
echo "==> HTTP rules (examples/http-policy.yaml) in place of that policy: GET / only, through the node's proxy"
sluice delete networkpolicy web-from-client -n demo
sluice apply -f examples/http-policy.yaml
sleep 0.5
sluice exec client -n demo -- sh -c "printf 'GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n' | nc -w 2 $server4 8080 | tail -n 1"
sluice exec client -n demo -- sh -c "printf 'GET /admin HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n' | nc -w 2 $server4 8080 | head -n 1"
sluice observe --type l7 --last 2
echo
sluice status
if [ $keep = 1 ]; then
  echo
  echo "The lab is up. Try: SLUICE_LAB=demo $bin/sluice get pods -A; ... exec client -n demo -- sh"
  echo "Remove it with:     SLUICE_LAB=demo $bin/sluice down"
fi
