# shellcheck shell=bash
# Helpers shared by run.sh and the checks: command echo / dry run, results, polling.

DRY_RUN=${DRY_RUN:-0}
FAILED_CHECKS=()
PASSED_CHECKS=()
# One line per check: name, pass (true|false), seconds, detail (tab-separated).
RESULTS=()
# What report/die printed during the current check, for the results' detail.
DETAIL_FILE=$(mktemp)

# Prints a command as it will run, each argument single-quoted when the shell needs it, so
# the line can be pasted into a shell.
show() {
  local arg line=""
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      line+=" $arg"
    else
      line+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '+%s\n' "$line" >&2
}

# Prints a measurement (not in a dry run, where outputs are placeholders).
report() {
  if ((DRY_RUN)); then return 0; fi
  # shellcheck disable=SC2059 # the format is the caller's
  printf "  $1\n" "${@:2}" | tee -a "$DETAIL_FILE" >&2
}

# Runs a command after printing it; in a dry run only prints it.
run() {
  show "$@"
  if ((DRY_RUN)); then return 0; fi
  "$@"
}

# Like run, for commands whose output the script reads: in a dry run prints the command and
# outputs PLACEHOLDER instead, so the rest of the script can go on printing what it would do.
out() {
  local placeholder=$1
  shift
  show "$@"
  if ((DRY_RUN)); then
    printf '%s\n' "$placeholder"
    return 0
  fi
  "$@"
}

step() { printf '\n==> %s\n' "$*" >&2; }

# Runs one end-to-end check in a subshell with `set -e` in force (it is not inside an `if`,
# where bash would ignore it), records PASS or FAIL, and carries on with the next check.
check() {
  local name=$1 started=$SECONDS
  shift
  step "check $name"
  : >"$DETAIL_FILE"
  set +e
  (
    set -e
    "$@"
  )
  local rc=$?
  set -e
  if ((DRY_RUN)); then
    # Assertions are not evaluated in a dry run; a failure here is a bug in the script.
    ((rc == 0)) || {
      printf 'DRY-RUN ERROR: %s exited %s\n' "$name" "$rc"
      FAILED_CHECKS+=("$name")
    }
    return 0
  fi
  local detail pass=true
  detail=$(sed 's/^ *//' "$DETAIL_FILE" | paste -sd ';' | sed 's/;/; /g' | tr '\t' ' ')
  if ((rc == 0)); then
    printf 'PASS: %s\n' "$name"
    PASSED_CHECKS+=("$name")
  else
    printf 'FAIL: %s\n' "$name"
    FAILED_CHECKS+=("$name")
    pass=false
  fi
  RESULTS+=("$(printf '%s\t%s\t%s\t%s' "$name" "$pass" "$((SECONDS - started))" "$detail")")
}

# Fails the current check with a reason (a no-op in a dry run, where outputs are placeholders).
die() {
  if ((DRY_RUN)); then return 0; fi
  printf '  %s\n' "$*" | tee -a "$DETAIL_FILE" >&2
  return 1
}

# Polls COMMAND every second until it succeeds or TIMEOUT seconds pass.
retry_for() {
  local timeout=$1
  shift
  if ((DRY_RUN)); then
    # Show the probe's commands once.
    "$@" >/dev/null || true
    return 0
  fi
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf '  timed out after %ss waiting for: %s\n' "$timeout" "$*" >&2
      return 1
    fi
    sleep 1
  done
}

# Is N within [LOW, HIGH]?
between() { (($1 >= $2 && $1 <= $3)); }

# Writes the results as JSON: the server's version, every node with its kubelet version and
# readiness, every check with pass, seconds and detail.
write_results() {
  local file=$1 nodes
  nodes=$(kubectl get nodes -o json)
  printf '%s\n' "${RESULTS[@]}" | python3 -c '
import json, sys
version, nodes, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
checks = []
for line in sys.stdin.read().splitlines():
    if not line:
        continue
    name, passed, seconds, detail = (line.split("\t") + [""])[:4]
    checks.append({"name": name, "pass": passed == "true", "seconds": int(seconds), "detail": detail})
result = {
    "kubernetes_version": version,
    "nodes": [
        {
            "name": n["metadata"]["name"],
            "kubelet_version": n["status"]["nodeInfo"]["kubeletVersion"],
            "ready": any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]),
        }
        for n in nodes["items"]
    ],
    "checks": checks,
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
' "$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')" "$nodes" "$file"
  printf 'results: %s\n' "$file" >&2
}
