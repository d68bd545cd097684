//! Bytes on the wire as the kernel sees them: `tcpdump` on loopback, the TCP payload of every
//! segment sent from one port (a source's), summed from the capture file. The same count for
//! every tool, whatever each tool reports about itself (TLS records, HTTP heads, protocol
//! frames and retransmissions all count).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running capture.
pub struct Capture {
    child: Child,
    file: PathBuf,
    stderr: BufReader<std::process::ChildStderr>,
}

/// What a capture counted.
pub struct WireCount {
    /// TCP payload bytes sent from the port.
    pub bytes: u64,
    /// Segments the kernel dropped before tcpdump read them (then `bytes` is short).
    pub dropped: u64,
}

impl Capture {
    /// Starts counting what is sent from `port` on loopback; `None` where tcpdump is missing
    /// or may not capture (it needs `CAP_NET_RAW`).
    pub fn start(dir: &Path, port: u16) -> Option<Capture> {
        let file = dir.join(format!("wire-{port}.pcap"));
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                "lo",
                "-n",
                "-s",
                "128",
                "-B",
                "65536",
                "-U",
                "--immediate-mode",
                "-w",
            ])
            .arg(&file)
            .arg(format!("tcp src port {port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        // tcpdump says it is listening once the filter is attached.
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line).ok()? == 0 {
                let _ = child.wait();
                return None;
            }
            if line.contains("listening on") {
                break;
            }
        }
        Some(Capture {
            child,
            file,
            stderr,
        })
    }

    /// Stops the capture and counts.
    pub fn stop(mut self) -> WireCount {
        // Segments are handed over as they come (`--immediate-mode`: without it they wait
        // in the ring until a block fills, and a capture stopped early loses them); stop once
        // tcpdump has written out what it was handed (the file stops growing).
        let size = |file: &Path| std::fs::metadata(file).map_or(0, |m| m.len());
        let mut written = size(&self.file);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = size(&self.file);
            if now == written {
                break;
            }
            written = now;
        }
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        let mut report = String::new();
        let _ = self.stderr.read_to_string(&mut report);
        // ("received by filter" is no check against "captured" on loopback: libpcap sees each
        // segment twice there and drops the outgoing copy itself.)
        let dropped = report
            .lines()
            .find(|l| l.ends_with("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let data = std::fs::read(&self.file).unwrap_or_default();
        let _ = std::fs::remove_file(&self.file);
        WireCount {
            bytes: tcp_payload(&data),
            dropped,
        }
    }
}

/// The TCP payload bytes of the IPv4 segments in a pcap file of Ethernet frames (loopback).
fn tcp_payload(data: &[u8]) -> u64 {
    if data.len() < 24
        || u32::from_le_bytes(data[0..4].try_into().unwrap()) & 0xffff_0000 != 0xa1b2_0000
    {
        return 0;
    }
    let mut at = 24;
    let mut total = 0u64;
    while at + 16 <= data.len() {
        let captured = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let original = u32::from_le_bytes(data[at + 12..at + 16].try_into().unwrap()) as usize;
        let frame = &data[at + 16..(at + 16 + captured).min(data.len())];
        at += 16 + captured;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let header = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 6 || ip.len() < header + 13 {
            continue;
        }
        // A segment over 64 KiB (big TCP) carries 0 as its length.
        let length = match usize::from(u16::from_be_bytes([ip[2], ip[3]])) {
            0 => original - 14,
            length => length,
        };
        let tcp_header = usize::from(ip[header + 12] >> 4) * 4;
        total += length.saturating_sub(header + tcp_header) as u64;
    }
    total
}
