#!/bin/sh
# Installs an aienv node from this source tree. Safe to run again (it updates in place).
#
#   sudo deploy/install.sh                       everything: system packages, binary, service
#   deploy/install.sh --skip-system-deps --skip-service-install --prefix ~/.local
#                                                just the binary, for one user, no root
#   sudo deploy/install.sh --uninstall           remove binary and service (data is kept)
#
# Options:
#   --prefix DIR            install the binary as DIR/bin/aienv (default /usr/local)
#   --skip-system-deps      do not install Docker or Podman, libvirt/QEMU, bubblewrap, git
#   --skip-service-install  do not create the `aienv` user, /var/lib/aienv, /etc/aienv and
#                           the systemd unit (start the node with `aienv daemon start`)
#   --non-interactive       never ask; answer yes (for scripts and CI)
#   --uninstall             stop the service and remove what this script installed
#
# The binary: $AIENV_BINARY when set, else target/release/aienv when it exists (from
# `cargo build --release`), else it is built with cargo.
set -eu
cd "$(dirname "$0")/.."

prefix=/usr/local
system_deps=true
service=true
interactive=true
uninstall=false
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
                  prefix=$2; shift ;;
        --prefix=*) prefix=${1#--prefix=} ;;
        --skip-system-deps) system_deps=false ;;
        --skip-service-install) service=false ;;
        --non-interactive) interactive=false ;;
        --uninstall) uninstall=true ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -t 0 ] || interactive=false

say() { echo "install.sh: $*"; }
ask() {
    # ask QUESTION: yes unless the person says no.
    $interactive || return 0
    printf 'install.sh: %s [Y/n] ' "$1"
    read -r answer </dev/tty || return 0
    case "$answer" in [nN]*) return 1 ;; *) return 0 ;; esac
}
need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: $1 needs root: run it with sudo, or add $2" >&2
        exit 1
    fi
}

binary="$prefix/bin/aienv"
unit=/etc/systemd/system/aienv.service
has_systemd() { command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; }

if $uninstall; then
    if [ -e "$unit" ]; then
        need_root "removing the service" "--skip-service-install"
        if has_systemd; then
            systemctl disable --now aienv.service || true
        fi
        rm -f "$unit"
        has_systemd && systemctl daemon-reload || true
        say "removed $unit"
    fi
    if [ -x "$binary" ]; then
        "$binary" daemon stop --config /etc/aienv/config.yaml >/dev/null 2>&1 || true
        rm -f "$binary"
        say "removed $binary"
    fi
    say "kept the data (/var/lib/aienv or ~/.local/share/aienv), /etc/aienv and the aienv user; remove them by hand if you want them gone"
    exit 0
fi

if $system_deps; then
    need_root "installing system packages" "--skip-system-deps"
    # Containers (Docker, else Podman), VMs (libvirt with QEMU), the sandbox (bubblewrap) and git.
    if command -v apt-get >/dev/null 2>&1; then
        packages=""
        command -v docker >/dev/null 2>&1 || command -v podman >/dev/null 2>&1 || packages="$packages docker.io"
        command -v libvirtd >/dev/null 2>&1 || packages="$packages libvirt-daemon-system libvirt-clients"
        command -v qemu-system-x86_64 >/dev/null 2>&1 || packages="$packages qemu-system-x86"
        command -v bwrap >/dev/null 2>&1 || packages="$packages bubblewrap"
        command -v git >/dev/null 2>&1 || packages="$packages git"
        if [ -n "$packages" ] && ask "install$packages with apt?"; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages
        fi
    elif command -v dnf >/dev/null 2>&1; then
        packages=""
        command -v docker >/dev/null 2>&1 || command -v podman >/dev/null 2>&1 || packages="$packages podman"
        command -v libvirtd >/dev/null 2>&1 || packages="$packages libvirt qemu-kvm"
        command -v bwrap >/dev/null 2>&1 || packages="$packages bubblewrap"
        command -v git >/dev/null 2>&1 || packages="$packages git"
        if [ -n "$packages" ] && ask "install$packages with dnf?"; then
            dnf install -y $packages
        fi
    else
        say "no apt-get or dnf: install Docker or Podman, libvirt with QEMU, bubblewrap and git yourself"
    fi
fi

source=${AIENV_BINARY:-target/release/aienv}
if [ -x "$source" ]; then
    say "using the binary $source"
else
    say "building the release binary (cargo build --release)"
    cargo build --release --locked
    source=target/release/aienv
fi
mkdir -p "$prefix/bin" || { echo "install.sh: cannot create $prefix/bin (use --prefix, or sudo)" >&2; exit 1; }
install -m 0755 "$source" "$binary.new"
mv -f "$binary.new" "$binary"
say "installed $binary ($("$binary" --version))"

if $service; then
    need_root "installing the service" "--skip-service-install"
    if ! id aienv >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/aienv --shell /usr/sbin/nologin aienv
    fi
    install -d -m 0700 -o aienv -g aienv /var/lib/aienv
    install -d -m 0755 /etc/aienv
    if [ ! -e /etc/aienv/config.yaml ]; then
        install -m 0644 deploy/config.example.yaml /etc/aienv/config.yaml
    fi
    if has_systemd; then
        sed "s|/usr/local/bin/aienv|$binary|g" deploy/aienv.service > "$unit.new"
        mv -f "$unit.new" "$unit"
        systemctl daemon-reload
        systemctl enable --now aienv.service
        systemctl restart aienv.service
        say "aienv runs as a service: systemctl status aienv"
    else
        say "no systemd here: start the node with"
        say "  su -s /bin/sh aienv -c '$binary daemon start --config /etc/aienv/config.yaml'"
    fi
    say "admin token (for the CLI on this host): /var/lib/aienv/admin.token"
    say "add a user for the LAN: sudo -u aienv $binary user add NAME --data-dir /var/lib/aienv"
else
    say "start the node: $binary serve   (or in the background: $binary daemon start)"
fi
