#!/bin/sh
# Installs an aienv node as a systemd service from this source tree:
#   sudo deploy/install.sh
# Builds the release binary, creates the `aienv` system user, installs the binary, the unit and
# a default config (kept if one exists), and starts the service.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo deploy/install.sh)" >&2
    exit 1
fi

# Environments run confined by bubblewrap (a node without it refuses cloned workspaces).
if ! command -v bwrap >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y bubblewrap
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y bubblewrap
    else
        echo "install.sh: install bubblewrap with your package manager" >&2
    fi
fi

cargo build --release --locked
install -m 0755 target/release/aienv /usr/local/bin/aienv

if ! id aienv >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/aienv --shell /usr/sbin/nologin aienv
fi
install -d -m 0700 -o aienv -g aienv /var/lib/aienv
install -d -m 0755 /etc/aienv
if [ ! -e /etc/aienv/config.yaml ]; then
    install -m 0644 deploy/config.example.yaml /etc/aienv/config.yaml
fi
install -m 0644 deploy/aienv.service /etc/systemd/system/aienv.service

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now aienv.service
    echo "aienv is running: systemctl status aienv"
else
    echo "installed; no systemd here: start it with"
    echo "  su -s /bin/sh aienv -c '/usr/local/bin/aienv serve --config /etc/aienv/config.yaml'"
fi
echo "admin token (for the CLI on this host): /var/lib/aienv/admin.token"
echo "add a user for the LAN: sudo -u aienv aienv user add NAME --data-dir /var/lib/aienv"
