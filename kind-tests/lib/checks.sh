# shellcheck shell=bash
# The end-to-end checks. Each runs under `check` (lib/common.sh): a failing command or `die`
# fails that check only. Expects CLUSTER, NS, APP_NS, MANIFESTS, CHART to be set.

# Runs a command in the client pod (worker 1).
client() { out "${PLACEHOLDER:-}" kubectl -n "$APP_NS" exec deploy/client -c client -- "$@"; }

# `n` requests from the client to URL, one line of curl --write-out FORMAT each.
client_loop() {
  local n=$1 url=$2 format=$3
  client sh -c "i=0; while [ \$i -lt $n ]; do curl -s -o /dev/null -m 5 -w '$format\n' '$url'; i=\$((i + 1)); done"
}

# How many lines of INPUT equal VALUE.
count_of() { grep -cx -- "$2" <<<"$1" || true; }

# (a) Traffic between nodes is mTLS: on the destination pod's host-side interface, the client's
# requests appear only as TCP to 15008 and their plaintext never does.
check_mtls() {
  local node="$CLUSTER-worker2" pod_ip node_ip dev marker pcap=/tmp/ambit-e2e.pcap
  pod_ip=$(out 10.244.2.10 kubectl -n "$APP_NS" get pod -l app=details -o 'jsonpath={.items[0].status.podIP}')
  node_ip=$(out 172.18.0.3 kubectl get node "$node" -o 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}')
  dev=$(out veth0 docker exec "$node" sh -c "ip -o route get $pod_ip | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p'")
  [[ -n $dev ]] || die "no route to $pod_ip on $node"
  run docker exec "$node" sh -c 'command -v tcpdump >/dev/null || { apt-get update -qq && apt-get install -y -qq tcpdump >/dev/null; }'
  marker="ambit-e2e-plaintext-canary-$RANDOM$RANDOM"
  # Capture for a fixed window in the background while the client calls details 20 times.
  show docker exec "$node" timeout 20 tcpdump -i "$dev" -nn -s 0 -U -w "$pcap" tcp
  local capture=0
  if ! ((DRY_RUN)); then
    docker exec "$node" timeout 20 tcpdump -i "$dev" -nn -s 0 -U -w "$pcap" tcp 2>/dev/null &
    capture=$!
  fi
  run sleep 3
  local codes
  codes=$(PLACEHOLDER=200 client sh -c "for i in \$(seq 20); do curl -s -o /dev/null -m 5 -w '%{http_code}\n' -H 'x-e2e-marker: $marker' http://details:9080/; done")
  ((DRY_RUN)) || wait "$capture" || true
  local hbone other leaked
  hbone=$(out 40 docker exec "$node" sh -c "tcpdump -r $pcap -nn 'tcp port 15008' 2>/dev/null | wc -l")
  other=$(out 0 docker exec "$node" sh -c "tcpdump -r $pcap -nn 'tcp and not port 15008 and not host 169.254.7.127 and not host $node_ip' 2>/dev/null | wc -l")
  leaked=$(out 0 docker exec "$node" sh -c "tcpdump -r $pcap -nn -A 2>/dev/null | grep -c '$marker' || true")
  report 'requests ok: %s/20; packets on 15008: %s; other app packets: %s; plaintext marker seen: %s' \
    "$(count_of "$codes" 200)" "$hbone" "$other" "$leaked"
  [[ $(count_of "$codes" 200) -eq 20 ]] || die "client -> details failed"
  ((hbone > 0)) || die "no HBONE (15008) traffic seen on $dev"
  ((other == 0)) || die "$other packets to/from the pod on ports other than 15008"
  ((leaked == 0)) || die "the request's plaintext crossed the wire"
}

# (d) A DENY AuthorizationPolicy refuses the client's identity; other callers still get in.
check_authz() {
  local code
  code=$(PLACEHOLDER=200 client curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true)
  [[ $code == 200 ]] || die "before the policy, client -> details answered $code"
  run kubectl apply -f "$MANIFESTS/authz-deny.yaml"
  retry_for 60 client_is_denied
  code=$(out 200 kubectl -n "$APP_NS" exec deploy/productpage-v1 -- curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true)
  [[ $code == 200 ]] || die "productpage -> details answered $code; only the client should be denied"
  run kubectl delete -f "$MANIFESTS/authz-deny.yaml"
}

# Denied = 403 or the connection reset (curl's 000).
client_is_denied() {
  local code
  code=$(PLACEHOLDER=403 client curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true)
  [[ $code == 403 || $code == 000 ]]
}

# Installs the namespace's waypoint (needed by the L7 checks b and c).
use_waypoint() {
  run kubectl apply -f "$MANIFESTS/waypoint.yaml"
  run kubectl label namespace "$APP_NS" ambit.dev/use-waypoint=waypoint --overwrite
  run kubectl -n "$APP_NS" wait --for=condition=Programmed waypoint/waypoint --timeout=180s
}

# Applies a TrafficRoute and waits until the waypoint has it.
apply_route() {
  run kubectl apply -f "$MANIFESTS/$1.yaml"
  run kubectl -n "$APP_NS" wait --for=condition=Programmed "trafficroute/$2" --timeout=90s
}

# (b) A 90/10 TrafficRoute on reviews: 1000 requests split 90±5 % / 10±5 %, none to v3.
check_canary() {
  use_waypoint
  apply_route route-canary reviews-canary
  retry_for 60 no_v3_in_sample
  local versions v1 v2 v3 failed
  versions=$(PLACEHOLDER=v1 client_loop 1000 http://reviews:9080/ '%header{x-demo-version}')
  v1=$(count_of "$versions" v1)
  v2=$(count_of "$versions" v2)
  v3=$(count_of "$versions" v3)
  failed=$((1000 - v1 - v2 - v3))
  report 'reviews: v1=%s v2=%s v3=%s failed=%s (of 1000)' "$v1" "$v2" "$v3" "$failed"
  between "$v1" 850 950 || die "v1 got $v1, want 900±50"
  between "$v2" 50 150 || die "v2 got $v2, want 100±50"
  ((v3 == 0)) || die "v3 got $v3, want 0"
  ((failed <= 10)) || die "$failed requests failed"
}

# The route is in force once 40 requests in a row see no v3.
no_v3_in_sample() {
  local versions
  versions=$(PLACEHOLDER=v1 client_loop 40 http://reviews:9080/ '%header{x-demo-version}')
  [[ $(count_of "$versions" v3) -eq 0 && $(count_of "$versions" "") -eq 0 ]]
}

# (c) ratings fails half its requests; a retry route brings success to >= 99 %.
check_retries() {
  run kubectl -n "$APP_NS" set env deploy/ratings-v1 DEMO_FAIL_RATE=0.5
  run kubectl -n "$APP_NS" rollout status deploy/ratings-v1 --timeout=120s
  local codes ok
  # Without retries the flakiness must show, or this check could not fail.
  codes=$(PLACEHOLDER=200 client_loop 200 http://ratings:9080/ '%{http_code}')
  ok=$(count_of "$codes" 200)
  report 'without retries: %s/200 ok' "$ok"
  between "$ok" 50 150 || die "the flaky backend answered $ok/200 ok without retries (want about 100)"
  apply_route route-retry ratings-retry
  retry_for 60 ratings_sample_ok
  codes=$(PLACEHOLDER=200 client_loop 1000 http://ratings:9080/ '%{http_code}')
  ok=$(count_of "$codes" 200)
  report 'with retries: %s/1000 ok' "$ok"
  ((ok >= 990)) || die "only $ok/1000 succeeded with retries (want >= 990)"
}

ratings_sample_ok() {
  local codes
  codes=$(PLACEHOLDER=200 client_loop 20 http://ratings:9080/ '%{http_code}')
  [[ $(count_of "$codes" 200) -eq 20 ]]
}

# (e) `helm upgrade --set` of a data-plane value rolls the ztunnel DaemonSet one node at a
# time: every pod is replaced, and at no sample (1 s apart) are two nodes without a ready one.
check_upgrade() {
  local ds=ztunnel sel desired gen old_uids max_down=0
  # shellcheck disable=SC2016 # a Go template, not shell
  sel=$(out app=ztunnel kubectl -n "$NS" get ds "$ds" -o 'go-template={{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}')
  sel=${sel%,}
  desired=$(out 3 kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.status.desiredNumberScheduled}')
  gen=$(out 1 kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.metadata.generation}')
  old_uids=$(out uid-1 kubectl -n "$NS" get pods -l "$sel" -o 'jsonpath={range .items[*]}{.metadata.uid}{"\n"}{end}')
  run helm upgrade ambit "$CHART" -n "$NS" --reuse-values --set ztunnel.logLevel=debug
  local deadline=$((SECONDS + 300)) ready new_gen updated available
  while true; do
    ready=$(out 3 kubectl -n "$NS" get pods -l "$sel" -o 'go-template={{range .items}}{{if not .metadata.deletionTimestamp}}{{range .status.conditions}}{{if and (eq .type "Ready") (eq .status "True")}}x{{end}}{{end}}{{end}}{{end}}')
    ready=${#ready}
    ((desired - ready > max_down)) && max_down=$((desired - ready))
    read -r new_gen updated available < <(out "2 3 3" kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.status.observedGeneration} {.status.updatedNumberScheduled} {.status.numberAvailable}')
    if ((new_gen > gen && updated == desired && available == desired)); then break; fi
    ((DRY_RUN)) && break
    ((SECONDS < deadline)) || die "rollout not finished after 300 s (generation $new_gen, updated $updated/$desired, available $available)"
    sleep 1
  done
  local new_uids max_unavailable
  new_uids=$(out uid-2 kubectl -n "$NS" get pods -l "$sel" -o 'jsonpath={range .items[*]}{.metadata.uid}{"\n"}{end}')
  max_unavailable=$(out 1 kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.spec.updateStrategy.rollingUpdate.maxUnavailable}')
  report '%s nodes; most nodes without a ready ztunnel at once: %s; maxUnavailable: %s' "$desired" "$max_down" "$max_unavailable"
  [[ $max_unavailable == 1 ]] || die "DaemonSet maxUnavailable is $max_unavailable, want 1"
  ((max_down <= 1)) || die "$max_down nodes were without ztunnel at once"
  local uid
  for uid in $old_uids; do
    grep -qx -- "$uid" <<<"$new_uids" && die "pod $uid was not replaced"
  done
  return 0
}
