# shellcheck shell=bash
# The end-to-end checks. Each runs under `check` (lib/common.sh): a failing command or `die`
# fails that check only. Expects CLUSTER, NS, APP_NS, MANIFESTS, CHART, WORKER1, WORKER2,
# WORK and the provider's node_exec to be set.

# Runs a command in the client pod (worker 1).
client() { out "${PLACEHOLDER:-}" kubectl -n "$APP_NS" exec deploy/client -c client -- "$@"; }

# `n` requests from the client to URL, one line of curl --write-out FORMAT each.
client_loop() {
  local n=$1 url=$2 format=$3
  client sh -c "i=0; while [ \$i -lt $n ]; do curl -s -o /dev/null -m 5 -w '$format\n' '$url'; i=\$((i + 1)); done"
}

# How many lines of INPUT equal VALUE.
count_of() { grep -cx -- "$2" <<<"$1" || true; }

deploy_bookinfo() {
  show sed -e "s/__WORKER1__/$WORKER1/" -e "s/__WORKER2__/$WORKER2/" "$MANIFESTS/bookinfo.yaml" '|' kubectl apply -f -
  if ! ((DRY_RUN)); then
    sed -e "s/__WORKER1__/$WORKER1/" -e "s/__WORKER2__/$WORKER2/" "$MANIFESTS/bookinfo.yaml" | kubectl apply -f -
  fi
}

pod_ip() { out "${PLACEHOLDER:-10.244.2.10}" kubectl -n "$1" get pod -l "$2" -o 'jsonpath={.items[0].status.podIP}'; }

# ---- background traffic: a request loop in a pod while something disruptive happens ----

# traffic_start NAME NAMESPACE DEPLOY URL: curl URL in a loop from DEPLOY's pod, 20 per second.
traffic_start() {
  local name=$1 ns=$2 deploy=$3 url=$4
  show kubectl -n "$ns" exec "deploy/$deploy" -- sh -c "<curl $url in a loop until /tmp/stop-$name exists>"
  ((DRY_RUN)) && return 0
  kubectl -n "$ns" exec "deploy/$deploy" -- sh -c "rm -f /tmp/stop-$name; while [ ! -e /tmp/stop-$name ]; do curl -s -o /dev/null -m 5 -w '%{http_code}\n' '$url'; sleep 0.05; done" \
    >"$WORK/traffic-$name" 2>"$WORK/traffic-$name.err" &
  printf '%s %s %s\n' "$!" "$ns" "$deploy" >"$WORK/traffic-$name.pid"
  sleep 2
}

# traffic_stop NAME: stops the loop; prints "<requests> <failed>".
traffic_stop() {
  local name=$1 pid ns deploy total ok
  ((DRY_RUN)) && {
    printf '100 0\n'
    return 0
  }
  read -r pid ns deploy <"$WORK/traffic-$name.pid"
  kubectl -n "$ns" exec "deploy/$deploy" -- touch "/tmp/stop-$name" >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
  kill "$pid" 2>/dev/null || true
  total=$(grep -c . "$WORK/traffic-$name" || true)
  ok=$(grep -cx 200 "$WORK/traffic-$name" || true)
  printf '%s %s\n' "$total" "$((total - ok))"
}

# ---- the wire: what crosses between nodes ------------------------------------------------

# capture NODE FILTER SECONDS: tcpdump on NODE's link to the other nodes (eth0), in the background.
capture_start() {
  local node=$1 filter=$2 seconds=$3
  show node_exec "$node" timeout "$seconds" tcpdump -i eth0 -nn -s 0 -U -w "/tmp/ambit-e2e-$CLUSTER.pcap" "$filter"
  ((DRY_RUN)) && return 0
  node_exec "$node" sh -c 'command -v tcpdump >/dev/null || { apt-get update -qq && apt-get install -y -qq tcpdump >/dev/null; }'
  node_exec "$node" timeout "$seconds" tcpdump -i eth0 -nn -s 0 -U -w "/tmp/ambit-e2e-$CLUSTER.pcap" "$filter" 2>/dev/null &
  CAPTURE_PID=$!
  sleep 2
}

# capture_count NODE FILTER: packets of the last capture on NODE that match FILTER.
capture_count() {
  ((DRY_RUN)) && wait "${CAPTURE_PID:-0}" 2>/dev/null
  out 0 node_exec "$1" sh -c "tcpdump -r /tmp/ambit-e2e-$CLUSTER.pcap -nn '$2' 2>/dev/null | wc -l"
}

# capture_contains NODE TEXT: how many packets of the last capture carry TEXT in clear.
capture_contains() {
  out 0 node_exec "$1" sh -c "tcpdump -r /tmp/ambit-e2e-$CLUSTER.pcap -nn -A 2>/dev/null | grep -c '$2' || true"
}

capture_wait() { ((DRY_RUN)) || wait "${CAPTURE_PID:-0}" || true; }

# wire_check NODE POD_IP FROM_NS FROM_DEPLOY URL MODE: 20 requests to URL from FROM_DEPLOY
# while capturing on NODE's link what goes to or from POD_IP. MODE mesh: only HBONE (15008)
# and no plaintext; MODE plain: the app's port in clear and no HBONE.
wire_check() {
  local node=$1 ip=$2 ns=$3 deploy=$4 url=$5 mode=$6 marker codes hbone other leaked caller
  marker="ambit-e2e-plaintext-canary-$RANDOM$RANDOM"
  # The caller's IP too: through a waypoint on the destination's node, what crosses the link
  # is caller -> waypoint, not caller -> destination.
  caller=$(out 10.244.1.5 kubectl -n "$ns" get pods -l "app=${deploy%-v1}" -o 'jsonpath={.items[0].status.podIP}')
  capture_start "$node" "tcp and (host $ip or host $caller)" 15
  codes=$(PLACEHOLDER=200 out 200 kubectl -n "$ns" exec "deploy/$deploy" -- sh -c \
    "for i in \$(seq 20); do curl -s -o /dev/null -m 5 -w '%{http_code}\n' -H 'x-e2e-marker: $marker' '$url'; done")
  capture_wait
  hbone=$(capture_count "$node" 'tcp port 15008')
  other=$(capture_count "$node" 'tcp and not port 15008')
  leaked=$(capture_contains "$node" "$marker")
  report '%s: requests ok %s/20; on %s link, packets of %s or %s: 15008 %s, other ports %s, plaintext marker %s' \
    "$mode" "$(count_of "$codes" 200)" "$node" "$caller" "$ip" "$hbone" "$other" "$leaked"
  [[ $(count_of "$codes" 200) -eq 20 ]] || die "$deploy -> $url failed"
  if [[ $mode == mesh ]]; then
    ((hbone > 0)) || die "no HBONE (15008) traffic seen on $node"
    ((other == 0)) || die "$other packets to/from $caller or $ip on ports other than 15008"
    ((leaked == 0)) || die "the request's plaintext crossed the wire"
  else
    ((hbone == 0)) || die "$hbone HBONE packets for a pod that is not in the mesh"
    ((leaked > 0)) || die "the plaintext request was not seen: the capture missed it"
  fi
}

# The redirection rules in the network namespace holding IP on NODE: prints "present" if
# Ambit's nftables table is there, "absent" if not.
pod_rules() {
  local node=$1 ip=$2
  out present node_exec "$node" sh -c "
    for ns in /run/netns/*; do
      if nsenter --net=\"\$ns\" ip -o -4 addr show | grep -q ' $ip/'; then
        if nsenter --net=\"\$ns\" nft list table inet ambit >/dev/null 2>&1; then echo present; else echo absent; fi
        exit 0
      fi
    done
    echo no-netns"
}

pod_uids_restarts() {
  out "uid 0" kubectl -n "$1" get pods -o 'jsonpath={range .items[*]}{.metadata.uid} {.status.containerStatuses[0].restartCount}{"\n"}{end}'
}

# ---- the checks --------------------------------------------------------------------------

# Traffic between nodes is mTLS: on the destination node's link, the client's requests to
# details appear only as TCP to 15008 and their plaintext never does.
check_mtls() {
  local ip
  ip=$(pod_ip "$APP_NS" app=details)
  wire_check "$WORKER2" "$ip" "$APP_NS" client http://details:9080/ mesh
}

# A DENY AuthorizationPolicy refuses the client's identity; other callers still get in.
check_deny() {
  local code
  code=$(PLACEHOLDER=200 client curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true)
  [[ $code == 200 ]] || die "before the policy, client -> details answered $code"
  run kubectl apply -f "$MANIFESTS/authz-deny.yaml"
  retry_for 60 client_is_denied
  code=$(out 200 kubectl -n "$APP_NS" exec deploy/productpage-v1 -- curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true)
  report 'client denied; productpage -> details: %s' "$code"
  [[ $code == 200 ]] || die "productpage -> details answered $code; only the client should be denied"
  run kubectl delete -f "$MANIFESTS/authz-deny.yaml"
  retry_for 60 client_gets_200
}

# Denied = 403 or the connection reset (curl's 000).
client_is_denied() {
  local code
  code=$(PLACEHOLDER=403 client curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true)
  [[ $code == 403 || $code == 000 ]]
}

client_gets_200() {
  [[ $(PLACEHOLDER=200 client curl -s -o /dev/null -m 5 -w '%{http_code}' http://details:9080/ || true) == 200 ]]
}

# Installs the namespace's waypoint (needed by the L7 checks).
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

# A 90/10 TrafficRoute on reviews: 1000 requests split 90±5 % / 10±5 %, none to v3.
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

# ratings fails half its requests; a retry route brings success to >= 99 %.
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
  run kubectl -n "$APP_NS" wait --for=condition=Accepted backendpolicy/ratings-retry --timeout=90s
  retry_for 60 ratings_sample_ok
  codes=$(PLACEHOLDER=200 client_loop 1000 http://ratings:9080/ '%{http_code}')
  ok=$(count_of "$codes" 200)
  report 'with retries: %s/1000 ok' "$ok"
  ((ok >= 990)) || die "only $ok/1000 succeeded with retries (want >= 990)"
  run kubectl -n "$APP_NS" set env deploy/ratings-v1 DEMO_FAIL_RATE=0
  run kubectl -n "$APP_NS" rollout status deploy/ratings-v1 --timeout=120s
}

ratings_sample_ok() {
  local codes
  codes=$(PLACEHOLDER=200 client_loop 20 http://ratings:9080/ '%{http_code}')
  [[ $(count_of "$codes" 200) -eq 20 ]]
}

# `helm upgrade --set` of a data-plane value rolls the ztunnel DaemonSet one node at a time,
# each new ztunnel starting beside the old one (maxSurge 1, maxUnavailable 0), while the
# client calls details across nodes: every pod is replaced, at no sample (1 s apart) is a node
# without a ready ztunnel, and no request fails.
check_upgrade() {
  local ds=ztunnel sel desired gen old_uids max_down=0
  # shellcheck disable=SC2016 # a Go template, not shell
  sel=$(out app=ztunnel kubectl -n "$NS" get ds "$ds" -o 'go-template={{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}')
  sel=${sel%,}
  desired=$(out 2 kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.status.desiredNumberScheduled}')
  gen=$(out 1 kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.metadata.generation}')
  old_uids=$(out uid-1 kubectl -n "$NS" get pods -l "$sel" -o 'jsonpath={range .items[*]}{.metadata.uid}{"\n"}{end}')
  traffic_start upgrade "$APP_NS" client http://details:9080/
  run helm upgrade ambit "$CHART" -n "$NS" --reuse-values --set ztunnel.logLevel=debug
  local deadline=$((SECONDS + 300)) ready new_gen updated available
  while true; do
    # Nodes with a ready ztunnel (during a surge a node has two pods).
    # shellcheck disable=SC2016 # a Go template, not shell
    ready=$(out $'node-1\nnode-2' kubectl -n "$NS" get pods -l "$sel" -o 'go-template={{range .items}}{{$n := .spec.nodeName}}{{if not .metadata.deletionTimestamp}}{{range .status.conditions}}{{if and (eq .type "Ready") (eq .status "True")}}{{$n}}{{"\n"}}{{end}}{{end}}{{end}}{{end}}')
    ready=$(sort -u <<<"$ready" | grep -c . || true)
    if ((desired - ready > max_down)); then max_down=$((desired - ready)); fi
    read -r new_gen updated available < <(out "2 2 2" kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.status.observedGeneration} {.status.updatedNumberScheduled} {.status.numberAvailable}') || true
    if ((new_gen > gen && updated == desired && available == desired)); then break; fi
    ((DRY_RUN)) && break
    ((SECONDS < deadline)) || die "rollout not finished after 300 s (generation $new_gen, updated $updated/$desired, available $available)"
    sleep 1
  done
  sleep 3
  local total failed
  read -r total failed < <(traffic_stop upgrade)
  local new_uids roll
  new_uids=$(out uid-2 kubectl -n "$NS" get pods -l "$sel" -o 'jsonpath={range .items[*]}{.metadata.uid}{"\n"}{end}')
  roll=$(out "0 1" kubectl -n "$NS" get ds "$ds" -o 'jsonpath={.spec.updateStrategy.rollingUpdate.maxUnavailable} {.spec.updateStrategy.rollingUpdate.maxSurge}')
  report '%s nodes; most nodes without a ready ztunnel at once: %s; maxUnavailable maxSurge: %s; requests during the rollout: %s, failed %s' \
    "$desired" "$max_down" "$roll" "$total" "$failed"
  [[ $roll == "0 1" ]] || die "DaemonSet maxUnavailable/maxSurge are $roll, want 0 1"
  ((max_down == 0)) || die "$max_down nodes were without a ready ztunnel at once"
  local uid
  for uid in $old_uids; do
    grep -qx -- "$uid" <<<"$new_uids" && die "pod $uid was not replaced"
  done
  ((total > 0)) || die "no requests were made during the rollout"
  ((failed == 0)) || die "$failed of $total requests failed during the rollout"
}

# Pods that are already running join the mesh when their namespace is labelled and leave it
# when the label goes, without a restart; the wire shows plaintext, then only HBONE, then
# plaintext again.
check_enroll_running_pods() {
  local ns="e2e-enroll-$RANDOM" ip before after
  run kubectl create namespace "$ns"
  show sed "s/namespace: bookinfo/namespace: $ns/" "$MANIFESTS/bookinfo.yaml" '|' '<client, details>' '|' kubectl apply -f -
  if ! ((DRY_RUN)); then
    sed -e "s/__WORKER1__/$WORKER1/" -e "s/__WORKER2__/$WORKER2/" -e "s/namespace: bookinfo/namespace: $ns/" "$MANIFESTS/bookinfo.yaml" |
      python3 -c 'import sys, yaml; docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["metadata"]["name"] in ("client", "details", "details-v1")]; print(yaml.safe_dump_all(docs))' |
      kubectl apply -f -
  fi
  run kubectl -n "$ns" wait --for=condition=Available deploy --all --timeout=180s
  ip=$(pod_ip "$ns" app=details)
  before=$(pod_uids_restarts "$ns")
  wire_check "$WORKER2" "$ip" "$ns" client http://details:9080/ plain
  [[ $(pod_rules "$WORKER2" "$ip") == absent ]] || die "rules in the pod before the namespace was enrolled"

  run kubectl label namespace "$ns" ambit.dev/dataplane-mode=ambient
  retry_for 60 rules_are "$WORKER2" "$ip" present
  wire_check "$WORKER2" "$ip" "$ns" client http://details:9080/ mesh

  run kubectl label namespace "$ns" ambit.dev/dataplane-mode-
  retry_for 60 rules_are "$WORKER2" "$ip" absent
  wire_check "$WORKER2" "$ip" "$ns" client http://details:9080/ plain
  after=$(pod_uids_restarts "$ns")
  report 'pods (uid restarts) before: %s; after: %s' "$(tr '\n' ',' <<<"$before")" "$(tr '\n' ',' <<<"$after")"
  [[ $before == "$after" ]] || die "pods were restarted or replaced"
  run kubectl delete namespace "$ns" --wait=false
}

rules_are() { [[ $(pod_rules "$1" "$2") == "$3" ]]; }

# A pod deleted and recreated on the other node is captured there: details moves from worker
# 2 to worker 1 and productpage (worker 2) reaches it over HBONE only.
check_pod_recreated() {
  local old_ip ip node
  old_ip=$(pod_ip "$APP_NS" app=details)
  run kubectl -n "$APP_NS" patch deploy details-v1 --type merge -p "{\"spec\":{\"template\":{\"spec\":{\"nodeSelector\":{\"kubernetes.io/hostname\":\"$WORKER1\"}}}}}"
  run kubectl -n "$APP_NS" rollout status deploy/details-v1 --timeout=120s
  retry_for 60 single_pod "$APP_NS" app=details
  ip=$(PLACEHOLDER=10.244.1.20 pod_ip "$APP_NS" app=details)
  node=$(out "$WORKER1" kubectl -n "$APP_NS" get pod -l app=details -o 'jsonpath={.items[0].spec.nodeName}')
  report 'details: %s on %s -> %s on %s' "$old_ip" "$WORKER2" "$ip" "$node"
  [[ $node == "$WORKER1" ]] || die "details runs on $node, want $WORKER1"
  [[ $(pod_rules "$WORKER1" "$ip") == present ]] || die "the recreated pod has no redirection rules"
  wire_check "$WORKER1" "$ip" "$APP_NS" productpage-v1 http://details:9080/ mesh
}

single_pod() {
  [[ $(out 1 kubectl -n "$1" get pods -l "$2" -o name | wc -l) -eq 1 ]]
}

lease_holder() { out ambit-operator-a kubectl -n "$NS" get lease ambit-operator -o 'jsonpath={.spec.holderIdentity}'; }

# The operator leader is killed under traffic: the standby takes the Lease, config changes
# made afterwards still reach the proxies, and no request fails.
check_leader_failover() {
  local leader new
  leader=$(lease_holder)
  [[ -n $leader ]] || die "no operator holds the Lease"
  traffic_start failover "$APP_NS" client http://details:9080/
  run kubectl -n "$NS" delete pod "$leader" --grace-period=0 --force
  retry_for 90 leader_is_not "$leader"
  new=$(lease_holder)
  # A change after the failover: the new leader compiles and the waypoint applies it.
  run kubectl -n "$APP_NS" patch trafficroute reviews-canary --type json -p '[{"op":"replace","path":"/spec/rules/0/backends","value":[{"subset":{"version":"v1"},"weight":100}]}]'
  retry_for 60 only_v1_in_sample
  local total failed
  read -r total failed < <(traffic_stop failover)
  report 'leader %s killed; new leader %s; requests meanwhile %s, failed %s; route change after failover applied' \
    "$leader" "$new" "$total" "$failed"
  [[ $new != "$leader" ]] || die "the Lease still names the killed pod"
  ((total > 0)) || die "no requests were made"
  ((failed == 0)) || die "$failed of $total requests failed"
}

leader_is_not() {
  local h
  h=$(lease_holder)
  [[ -n $h && $h != "$1" ]] && kubectl -n "$NS" get pod "$h" >/dev/null 2>&1
}

only_v1_in_sample() {
  local versions
  versions=$(PLACEHOLDER=v1 client_loop 40 http://reviews:9080/ '%header{x-demo-version}')
  [[ $(count_of "$versions" v1) -eq 40 ]]
}

# `helm upgrade` with a changed chart value reaches what it configures (the operator's log
# level, by a rolling update of its Deployment) while the mesh stays Ready and serving.
check_helm_upgrade() {
  local revision args
  traffic_start helm "$APP_NS" client http://details:9080/
  run helm upgrade ambit "$CHART" -n "$NS" --reuse-values --set operator.logLevel=debug --wait --timeout 5m
  run kubectl -n "$NS" rollout status deploy/ambit-operator --timeout=180s
  run kubectl wait --for=condition=Ready mesh/default --timeout=120s
  revision=$(out 3 sh -c "helm history ambit -n $NS -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1][\"revision\"])'")
  args=$(out debug kubectl -n "$NS" get deploy ambit-operator -o 'jsonpath={.spec.template.spec.containers[0]}')
  local total failed
  read -r total failed < <(traffic_stop helm)
  report 'release revision %s; operator container has debug logging: %s; requests %s, failed %s' \
    "$revision" "$(grep -c debug <<<"$args" || true)" "$total" "$failed"
  grep -q debug <<<"$args" || die "the operator Deployment does not carry the new log level"
  ((failed == 0)) || die "$failed of $total requests failed during helm upgrade"
}

# `helm uninstall` removes every Ambit object, the rules in every pod and Ambit's files on the
# nodes, and the apps keep working in plaintext.
check_uninstall() {
  local ips ip node left=()
  ips=$(out 10.244.2.10 kubectl -n "$APP_NS" get pods -o 'jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP}{"\n"}{end}')
  run helm uninstall ambit -n "$NS" --wait --timeout 5m
  retry_for 120 no_ambit_pods
  local kinds kept
  # The Mesh is the chart's; Waypoints, routes and policies are the user's intent, kept like
  # the CRDs (a later install serves them again).
  kinds=$(out "" kubectl get meshes -A -o name 2>/dev/null || true)
  [[ -z $kinds ]] || left+=("objects: $kinds")
  kept=$(out "" kubectl get waypoints,trafficroutes,authorizationpolicies,backendpolicies -A -o name 2>/dev/null | wc -l || true)
  local rest
  rest=$(out "" kubectl get daemonsets,deployments,services,serviceaccounts,configmaps,secrets -n "$NS" -o name 2>/dev/null | grep -v 'kube-root-ca.crt\|serviceaccount/default' || true)
  [[ -z $rest ]] || left+=("in $NS: $(tr '\n' ' ' <<<"$rest")")
  rest=$(out "" kubectl get deploy,svc -n "$APP_NS" -l app.kubernetes.io/managed-by=ambit-operator -o name 2>/dev/null || true)
  [[ -z $rest ]] || left+=("in $APP_NS: $(tr '\n' ' ' <<<"$rest")")
  rest=$(out "" sh -c "kubectl get clusterroles,clusterrolebindings -o name | grep -i ambit || true")
  [[ -z $rest ]] || left+=("cluster: $(tr '\n' ' ' <<<"$rest")")
  while read -r node ip; do
    [[ -n $ip ]] || continue
    # no-netns: the pod is gone (a waypoint), and its rules with it.
    case $(pod_rules "$node" "$ip") in absent | no-netns) ;; *) left+=("rules in pod $ip on $node") ;; esac
  done <<<"$ips"
  for node in "$WORKER1" "$WORKER2"; do
    rest=$(out "" node_exec "$node" sh -c 'ls /opt/cni/bin/ambit-cni 2>/dev/null; grep -l ambit /etc/cni/net.d/* 2>/dev/null; ls -A /var/run/ambit 2>/dev/null' || true)
    [[ -z $rest ]] || left+=("files on $node: $(tr '\n' ' ' <<<"$rest")")
  done
  local codes
  codes=$(PLACEHOLDER=200 client_loop 20 http://details:9080/ '%{http_code}')
  report 'left behind: %s; client -> details after uninstall: %s/20 ok; CRDs are kept (Helm never deletes crds/) and so are the user'"'"'s %s Waypoints, routes and policies' \
    "${left[*]:-nothing}" "$(count_of "$codes" 200)" "${kept:-0}"
  ((${#left[@]} == 0)) || die "uninstall left: ${left[*]}"
  [[ $(count_of "$codes" 200) -eq 20 ]] || die "the app stopped working after uninstall"
}

no_ambit_pods() {
  [[ -z $(kubectl get pods -n "$NS" -o name 2>/dev/null) ]] &&
    [[ -z $(kubectl get pods -n "$APP_NS" -l app.kubernetes.io/managed-by=ambit-operator -o name 2>/dev/null) ]]
}
