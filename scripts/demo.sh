#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine (as root): install pyd and its plugins,
# start a daemon on temporary roots, import a busybox image, run a real container, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
pyd=$PWD/.venv/bin/pyd

work=$(mktemp -d /tmp/pyd-demo.XXXXXX)
sock=unix://$work/pyd.sock
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        "$pyd" -H "$sock" rm -f demo >/dev/null 2>&1 || true
        kill -TERM "$daemon_pid"
        wait "$daemon_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A minimal image: Debian's static busybox plus its applet links.
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,root,dev,proc,sys}
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
tar -C "$rootfs" -cf "$work/busybox.tar" .

echo '{}' >"$work/daemon.json"
"$pyd" daemon --data-root "$work/data" --exec-root "$work/exec" -H "$sock" \
    --pidfile "$work/pyd.pid" --config-file "$work/daemon.json" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
    "$pyd" -H "$sock" version >/dev/null 2>&1 && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log"; exit 1; }
    sleep 0.1
done

set -x
"$pyd" -H "$sock" info --format 'storage driver: {{.Driver}}, logging driver: {{.LoggingDriver}}'
"$pyd" -H "$sock" import "$work/busybox.tar" busybox:latest
"$pyd" -H "$sock" images
"$pyd" -H "$sock" run --rm --network none busybox sh -c 'echo "hello from pid $$ in $(hostname)"'
"$pyd" -H "$sock" run -d --name demo busybox sh -c 'echo started; sleep 30'
sleep 0.5
"$pyd" -H "$sock" ps
"$pyd" -H "$sock" logs demo
"$pyd" -H "$sock" stop -t 1 demo
