#!/bin/sh
# Builds skiff's local container images without any registry and writes them as docker-archive
# tarballs (what `ctr images import` reads):
#   docker.io/library/busybox:latest, docker.io/skiff/busybox:latest  (Debian's busybox-static)
#   docker.io/skiff/pause:3.9                                          (images/pause.c, static)
#   docker.io/skiff/echo:latest  HTTP on :80 answering "[v1] Hello, Kubernetes! From host: <hostname>"
# Usage: images/build.sh OUT_DIR   (then images/import.sh SOCKET OUT_DIR)
# Needs: busybox-static, gcc, python3.
set -eu
out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

busybox=/bin/busybox
[ -x "$busybox" ] || { echo "busybox-static is missing: apt-get install busybox-static" >&2; exit 1; }

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
    --tag docker.io/library/busybox:latest --tag docker.io/skiff/busybox:latest --cmd /bin/sh

mkdir -p "$work/pause"
gcc -static -O2 -o "$work/pause/pause" "$here/pause.c"
python3 "$here/oci.py" "$work/pause" "$out/pause.tar" --tag docker.io/skiff/pause:3.9 --entrypoint /pause

mkroot "$work/echo"
cat > "$work/echo/bin/echo-server" <<'SRV'
#!/bin/sh
# Answers with the pod's hostname, like the seeds' hellok8s image.
echo "[v1] Hello, Kubernetes! From host: $(hostname)" > /var/www/index.html
exec httpd -f -p "${PORT:-80}" -h /var/www
SRV
chmod +x "$work/echo/bin/echo-server"
python3 "$here/oci.py" "$work/echo" "$out/echo.tar" --tag docker.io/skiff/echo:latest --entrypoint /bin/echo-server

echo "images written to $out"
