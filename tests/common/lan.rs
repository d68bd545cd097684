//! Separate hosts on one machine: network namespaces joined by a bridge, each with its own
//! address, and a node started inside one.

use std::process::Command;

use aienv::client::{Client, Credentials};

use super::TestNode;

pub fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A bridge with `hosts` namespaces on it; everything is removed on drop.
pub struct Lan {
    /// The bridge's name.
    pub bridge: String,
    /// The hosts' namespaces.
    pub namespaces: Vec<String>,
    /// Unique per LAN in this process (names and the subnet 10.99.<subnet>.0/24).
    tag: u32,
    /// The third byte of the subnet.
    pub subnet: u32,
    /// Whether an iptables rule lets the bridge's traffic through (removed on drop).
    accept_rule: bool,
}

fn bridge_netfilter() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let output = Command::new("iptables").args(args).output().map_err(|e| {
        format!("iptables: {e} (needed: br_netfilter filters bridged traffic here)")
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

static LANS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Lan {
    /// A bridge with `hosts` namespaces, each linked to it.
    pub fn create(hosts: usize) -> Result<Lan, String> {
        let mut lan = Lan::unlinked(hosts)?;
        for i in 0..hosts {
            lan.link(i)?;
        }
        Ok(lan)
    }

    /// A bridge with `hosts` namespaces that have no network link yet.
    pub fn unlinked(hosts: usize) -> Result<Lan, String> {
        let subnet = LANS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = (std::process::id() % 10_000) * 10 + subnet;
        let lan_bridge = format!("avbr{tag}");
        let mut lan = Lan {
            bridge: lan_bridge,
            namespaces: Vec::new(),
            tag,
            subnet,
            accept_rule: false,
        };
        ip(&[
            "link",
            "add",
            &lan.bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("10.99.{subnet}.1/24"),
            "dev",
            &lan.bridge,
        ])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        // With br_netfilter loaded (Docker loads it and sets FORWARD to DROP), frames crossing
        // a bridge go through iptables' FORWARD chain: let this bridge's own traffic pass.
        if bridge_netfilter() {
            iptables(&[
                "-I",
                "FORWARD",
                "-i",
                &lan.bridge,
                "-o",
                &lan.bridge,
                "-j",
                "ACCEPT",
            ])?;
            lan.accept_rule = true;
        }
        for i in 0..hosts {
            let ns = format!("aienv-lan-{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            lan.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// Host `i`'s address, with `suffix` (such as `/24`).
    pub fn address(&self, i: usize, suffix: &str) -> String {
        format!("10.99.{}.{}{suffix}", self.subnet, 10 + i)
    }

    /// Plugs host `i` into the bridge as `eth{i}` with its address.
    pub fn link(&mut self, i: usize) -> Result<(), String> {
        let tag = self.tag;
        let ns = self.namespaces[i].clone();
        let outer = format!("av{tag}o{i}");
        let inner = format!("eth{i}");
        // The inner end is created inside the namespace: its name may exist outside.
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ])?;
        ip(&["link", "set", &outer, "master", &self.bridge])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &self.address(i, "/24"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &inner])?;
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        if self.accept_rule {
            let _ = iptables(&[
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
    }
}

/// Starts the node of host `i` inside its namespace, announcing on `eth{i}`.
pub fn start_host(lan: &Lan, i: usize, dir: &std::path::Path) -> (TestNode, Client) {
    start_host_with(lan, i, dir, &[])
}

/// [`start_host`] with extra environment variables (configuration).
pub fn start_host_with(
    lan: &Lan,
    i: usize,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (TestNode, Client) {
    let data = dir.join(format!("host{i}"));
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &lan.namespaces[i],
            super::binary(),
            "serve",
            "--http-port",
            "0",
            "--bind",
            "0.0.0.0",
        ])
        .args([
            "--name",
            &format!("host{i}"),
            "--discovery-iface",
            &format!("eth{i}"),
            "--announce-interval",
            "0.2",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("AIENV_LOG", "warn")
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .envs(env.iter().copied());
    let node = TestNode::start(command, &data);
    let port = node.tls_url.rsplit(':').next().unwrap().to_string();
    // From outside the host only TLS answers, and only with the key its node id names.
    let client = Client::with_key(
        &format!("https://{}:{port}", lan.address(i, "")),
        Some(Credentials::Token(node.token())),
        node.key,
    );
    (node, client)
}
