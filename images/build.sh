#!/bin/sh
# Builds skiff's local container images without any registry and writes them as docker-archive
# tarballs (what `ctr images import` reads):
#   busybox.tar  docker.io/library/busybox:{latest,1.35}, docker.io/skiff/busybox:{latest,1.35}
#                (Debian's busybox-static)
#   pause.tar    docker.io/skiff/pause:3.9  (images/pause.c, static; the sandbox image)
#   echo.tar     docker.io/skiff/echo:{latest,v1}  HTTP on $PORT (80) answering
#                "[$HELLO_VERSION] Hello, Kubernetes! From host: <hostname>", /healthz "ok"
# Tags other than :latest default to imagePullPolicy IfNotPresent, like any pinned image.
# Usage: images/build.sh OUT_DIR   (then images/import.sh SOCKET OUT_DIR); see images/README.md.
# Needs: busybox-static, gcc (static glibc from libc6-dev), python3.
set -eu
out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

busybox=/bin/busybox
[ -x "$busybox" ] || { echo "busybox-static is missing: apt-get install busybox-static" >&2; exit 1; }
# Debian's dynamic `busybox` package installs the same path: the image has no libc to load.
if ! LC_ALL=C ldd "$busybox" 2>&1 | grep -q "not a dynamic executable"; then
    echo "$busybox is dynamically linked: apt-get install busybox-static" >&2
    exit 1
fi

# A busybox root: the binary and its applet links.
mkroot() {
    root=$1
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root" "$root/var/www"
    cp "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
    echo "root:x:0:" > "$root/etc/group"
}

mkroot "$work/busybox"
python3 "$here/oci.py" "$work/busybox" "$out/busybox.tar" \
    --tag docker.io/library/busybox:latest --tag docker.io/library/busybox:1.35 \
    --tag docker.io/skiff/busybox:latest --tag docker.io/skiff/busybox:1.35 --cmd /bin/sh

mkdir -p "$work/pause"
gcc -static -O2 -o "$work/pause/pause" "$here/pause.c"
python3 "$here/oci.py" "$work/pause" "$out/pause.tar" --tag docker.io/skiff/pause:3.9 --entrypoint /pause

mkroot "$work/echo"
cat > "$work/echo/bin/echo-server" <<'SRV'
#!/bin/sh
# Answers with the pod's hostname, like the seeds' hellok8s image.
echo "[${HELLO_VERSION:-v1}] Hello, Kubernetes! From host: $(hostname)" > /var/www/index.html
echo ok > /var/www/healthz
# busybox httpd exits on SIGTERM, so a pod stops within its grace period.
exec httpd -f -p "${PORT:-80}" -h /var/www
SRV
chmod +x "$work/echo/bin/echo-server"
python3 "$here/oci.py" "$work/echo" "$out/echo.tar" --tag docker.io/skiff/echo:latest --tag docker.io/skiff/echo:v1 --entrypoint /bin/echo-server

echo "images written to $out"
