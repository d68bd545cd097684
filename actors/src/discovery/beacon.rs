//! The beacon: one UDP socket joined to the discovery multicast group on a set of interfaces.
//! It sends and receives bytes; it does not interpret them (that is `wire` and the Announcer).

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// A network interface with an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name (`eth0`, `lo`).
    pub name: String,
    /// Its IPv4 address.
    pub address: Ipv4Addr,
    /// Up.
    pub up: bool,
    /// Multicast-capable.
    pub multicast: bool,
    /// Loopback.
    pub loopback: bool,
}

/// Every interface with an IPv4 address (one entry per address).
pub fn list_interfaces() -> Vec<Interface> {
    let mut result = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return result;
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned; entries stay valid until freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let family = unsafe { (*entry.ifa_addr).sa_family } as i32;
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let address = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = entry.ifa_flags as i32;
        result.push(Interface {
            name,
            address: Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
            up: flags & libc::IFF_UP != 0,
            multicast: flags & libc::IFF_MULTICAST != 0,
            loopback: flags & libc::IFF_LOOPBACK != 0,
        });
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    result
}

/// The interfaces to use: exactly those named, when any are; otherwise every up,
/// multicast-capable, non-loopback interface.
pub fn select_interfaces(all: &[Interface], named: &[String]) -> BTreeMap<String, Ipv4Addr> {
    all.iter()
        .filter(|i| {
            if named.is_empty() {
                i.up && i.multicast && !i.loopback
            } else {
                i.up && named.contains(&i.name)
            }
        })
        .map(|i| (i.name.clone(), i.address))
        .collect()
}

/// The discovery socket.
pub struct Beacon {
    socket: Arc<tokio::net::UdpSocket>,
    raw: Socket,
    group: SocketAddrV4,
    joined: BTreeMap<String, Ipv4Addr>,
}

impl Beacon {
    /// Binds `0.0.0.0:port` with address and port reuse (several nodes per host), TTL 1 and
    /// loopback of our own datagrams (so nodes on one host hear each other).
    pub fn bind(group: Ipv4Addr, port: u16) -> io::Result<Beacon> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_multicast_ttl_v4(1)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_nonblocking(true)?;
        // Room for a burst of announcements (a whole LAN answering a newcomer at once).
        let _ = socket.set_recv_buffer_size(1 << 20);
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        let raw = socket.try_clone()?;
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(Beacon {
            socket: Arc::new(socket),
            raw,
            group: SocketAddrV4::new(group, port),
            joined: BTreeMap::new(),
        })
    }

    /// Joins the group on `wanted` and leaves it on interfaces no longer wanted. Returns a
    /// line per change (or failure) for the log.
    pub fn sync_interfaces(&mut self, wanted: &BTreeMap<String, Ipv4Addr>) -> Vec<String> {
        let mut changes = Vec::new();
        let group = *self.group.ip();
        let gone: Vec<(String, Ipv4Addr)> = self
            .joined
            .iter()
            .filter(|(name, address)| wanted.get(*name) != Some(address))
            .map(|(n, a)| (n.clone(), *a))
            .collect();
        for (name, address) in gone {
            let _ = self.raw.leave_multicast_v4(&group, &address);
            self.joined.remove(&name);
            changes.push(format!("left {group} on {name} ({address})"));
        }
        for (name, address) in wanted {
            if self.joined.contains_key(name) {
                continue;
            }
            match self.raw.join_multicast_v4(&group, address) {
                Ok(()) => {
                    self.joined.insert(name.clone(), *address);
                    changes.push(format!("joined {group} on {name} ({address})"));
                }
                Err(error) => changes.push(format!("cannot join {group} on {name}: {error}")),
            }
        }
        changes
    }

    /// Interfaces the group is joined on.
    pub fn joined(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.joined
    }

    /// Sends `bytes` to the group out of every joined interface. Returns how many sends
    /// succeeded.
    pub fn send(&self, bytes: &[u8]) -> usize {
        let mut sent = 0;
        for address in self.joined.values() {
            if self.raw.set_multicast_if_v4(address).is_err() {
                continue;
            }
            // Straight through the descriptor: tokio's `try_send_to` reports WouldBlock until
            // the reactor has seen the socket writable once, which lost the first announcement.
            let group: SocketAddr = self.group.into();
            if self.raw.send_to(bytes, &group.into()).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// The socket, for the receive loop.
    pub fn socket(&self) -> Arc<tokio::net::UdpSocket> {
        self.socket.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_selection() {
        let interface = |name: &str, up, multicast, loopback| Interface {
            name: name.into(),
            address: Ipv4Addr::new(10, 0, 0, 1),
            up,
            multicast,
            loopback,
        };
        let all = vec![
            interface("lo", true, false, true),
            interface("eth0", true, true, false),
            interface("eth1", false, true, false),
            interface("tun0", true, false, false),
        ];
        let names = |m: BTreeMap<String, Ipv4Addr>| m.into_keys().collect::<Vec<_>>();
        assert_eq!(names(select_interfaces(&all, &[])), ["eth0"]);
        assert_eq!(names(select_interfaces(&all, &["lo".into()])), ["lo"]);
        assert_eq!(
            names(select_interfaces(&all, &["eth1".into()])),
            Vec::<String>::new()
        );
        assert!(list_interfaces().iter().any(|i| i.loopback));
    }
}
