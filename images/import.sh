#!/bin/sh
# Imports the tarballs images/build.sh wrote into a containerd (CRI's k8s.io namespace).
# Usage: images/import.sh CONTAINERD_SOCKET DIR
set -eu
sock=${1:?usage: import.sh SOCKET DIR}
dir=${2:?usage: import.sh SOCKET DIR}
for image in "$dir"/*.tar; do
    ctr --address "$sock" --namespace k8s.io images import --no-unpack=false "$image" >/dev/null
done
ctr --address "$sock" --namespace k8s.io images ls -q
