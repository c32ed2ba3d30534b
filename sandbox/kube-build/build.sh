#!/usr/bin/env bash
# Builds the sandbox's real control plane from the official Go modules into a cache outside
# the checkout, reused while the pins are the same:
#   $MAILFLEET_KUBE_CACHE (default ~/.cache/mailfleet/kubernetes/<version>/bin/)
#     kube-apiserver kube-controller-manager kube-scheduler etcd
# The versions are the ones pinned in go.mod (kubernetes) and etcd/go.mod (etcd).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kube_version="$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$here/go.mod")"
etcd_version="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/etcd/go.mod")"
cache="${MAILFLEET_KUBE_CACHE:-$HOME/.cache/mailfleet/kubernetes/$kube_version}"
bin="$cache/bin"
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false"
major="${kube_version#v}"; major="${major%%.*}"
minor="${kube_version#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$kube_version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor"
ldflags="$ldflags -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
# The cache is keyed by the build inputs' content (not their mtimes: a fresh clone's files are
# all new), so every checkout of the same pins reuses the same binaries.
key="$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" "$0" \
       | sha256sum | cut -c1-16)"
start=$(date +%s)
if [ "$(cat "$cache/build-key" 2>/dev/null)" = "$key" ] \
   && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] \
   && [ -x "$bin/kube-scheduler" ] && [ -x "$bin/etcd" ]; then
  echo "make kube: kubernetes $kube_version and etcd $etcd_version cached in $bin"
  exit 0
fi
rm -f "$cache/build-key"
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  echo "make kube: building $cmd $kube_version (the first build takes several minutes)"
  (cd "$here" && go build -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  mv "$bin/$cmd.tmp" "$bin/$cmd"
done
echo "make kube: building etcd $etcd_version"
(cd "$here/etcd" && go build -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
mv "$bin/etcd.tmp" "$bin/etcd"
printf '{"kubernetes": "%s", "etcd": "%s"}\n' "$kube_version" "$etcd_version" > "$cache/versions.json"
echo "$key" > "$cache/build-key"
echo "make kube: ready in $(( $(date +%s) - start )) s: $bin"
