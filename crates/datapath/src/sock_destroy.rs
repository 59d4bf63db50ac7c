//! Closing connections to a removed service backend. Socket-level load balancing rewrote the
//! pods' connect() to the backend address, so their sockets name the backend as remote end: a
//! sock_diag dump finds them and SOCK_DESTROY aborts each (as `ss -K` does) instead of leaving
//! it to hang until a timeout.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::netns::NetnsGuard;
use crate::DatapathError;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h): dump, or look up, the sockets of one family.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY` (linux/sock_diag.h): abort one socket; needs CONFIG_INET_DIAG_DESTROY.
const SOCK_DESTROY: u16 = 21;
/// TCP states (include/net/tcp_states.h); UDP reuses them (a connected UDP socket is ESTABLISHED).
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;
/// States to dump: all but listeners (no remote end) and TIME_WAIT (already closed; the kernel
/// refuses to destroy them). SYN_SENT stays in: a connect still in flight to the backend is as
/// stale as an established one.
const STATES: u32 = !((1 << TCP_LISTEN) | (1 << TCP_TIME_WAIT));
const NLMSG_HDRLEN: usize = size_of::<libc::nlmsghdr>();
/// Large enough for any dump datagram the kernel sends (it fills at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// `struct inet_diag_sockid` (linux/inet_diag.h): names one socket. Ports and addresses are in
/// network byte order; an IPv4 address is the first word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct InetDiagSockId {
    /// Local port.
    idiag_sport: u16,
    /// Remote port.
    idiag_dport: u16,
    /// Local address.
    idiag_src: [u32; 4],
    /// Remote address.
    idiag_dst: [u32; 4],
    /// Interface the socket is bound to, 0 when none.
    idiag_if: u32,
    /// The kernel's cookie for the socket: a destroy carrying it cannot hit another socket that
    /// took the same 4-tuple in the meantime.
    idiag_cookie: [u32; 2],
}

/// `struct inet_diag_req_v2` (linux/inet_diag.h): what to dump (SOCK_DIAG_BY_FAMILY with
/// NLM_F_DUMP) or which socket to act on (SOCK_DESTROY).
#[repr(C)]
#[allow(dead_code)] // fields are read by the kernel
struct InetDiagReqV2 {
    /// AF_INET or AF_INET6.
    sdiag_family: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    sdiag_protocol: u8,
    /// Attributes (INET_DIAG_*) to add to each reply; none are needed here.
    idiag_ext: u8,
    pad: u8,
    /// Bit mask of the states (1 << TCP_ESTABLISHED, ...) to dump.
    idiag_states: u32,
    /// The socket, for SOCK_DESTROY; ignored by a dump without a bytecode filter.
    id: InetDiagSockId,
}

/// `struct inet_diag_msg` (linux/inet_diag.h): one socket of a dump; the requested attributes
/// (none here) follow it.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code)] // the layout must match the kernel's, even where the fields are not read
struct InetDiagMsg {
    /// AF_INET or AF_INET6.
    idiag_family: u8,
    /// TCP state (TCP_ESTABLISHED, ...).
    idiag_state: u8,
    idiag_timer: u8,
    idiag_retrans: u8,
    id: InetDiagSockId,
    idiag_expires: u32,
    idiag_rqueue: u32,
    idiag_wqueue: u32,
    idiag_uid: u32,
    idiag_inode: u32,
}

/// A request as sent: the netlink header and its payload, with no padding between them.
#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

// The kernel reads and writes these by offset: a layout slip must not compile.
const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);
const _: () = assert!(size_of::<Request>() == NLMSG_HDRLEN + 56);

/// Destroys every socket of `protocol` (6 TCP or 17 UDP) in the network namespace at `netns`
/// (None: the caller's namespace) whose remote end is `dst`; returns how many were destroyed.
///
/// An IPv4 `dst` also matches IPv6 sockets connected to its IPv4-mapped address (dual-stack
/// sockets of pods). A TCP peer receives a RST; the local owner's next call fails with
/// ECONNABORTED. Sockets that close between the dump and their destroy are not counted.
///
/// The work runs on a fresh thread that enters `netns`, so the caller's thread never changes
/// namespace (it may be an async runtime's worker).
pub fn destroy_sockets_to(netns: Option<&Path>, dst: SocketAddr, protocol: u8) -> Result<usize, DatapathError> {
    let action = || match netns {
        Some(path) => format!("destroying sockets to {dst} in {}", path.display()),
        None => format!("destroying sockets to {dst} in the caller's network namespace"),
    };
    if ![libc::IPPROTO_TCP, libc::IPPROTO_UDP].contains(&i32::from(protocol)) {
        let invalid = io::Error::new(io::ErrorKind::InvalidInput, format!("protocol {protocol} is neither TCP (6) nor UDP (17)"));
        return Err(DatapathError::os(action(), invalid));
    }
    // An IPv4-mapped destination is an IPv4 one: match it against AF_INET sockets as well.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let Some(path) = netns else {
        return destroy_in_current_netns(dst, protocol).map_err(|e| DatapathError::os(action(), e));
    };
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let _inside = NetnsGuard::enter(path)?;
                destroy_in_current_netns(dst, protocol).map_err(|e| DatapathError::os(action(), e))
            })
            .join()
    });
    joined.unwrap_or_else(|_| Err(DatapathError::os(action(), io::Error::other("the sock_diag thread panicked"))))
}

/// Dumps and destroys on the calling thread, in its namespace (a netlink socket belongs to the
/// namespace it is opened in).
fn destroy_in_current_netns(dst: SocketAddr, protocol: u8) -> io::Result<usize> {
    let families: &[u8] = match dst.ip() {
        IpAddr::V4(_) => &[libc::AF_INET as u8, libc::AF_INET6 as u8],
        IpAddr::V6(_) => &[libc::AF_INET6 as u8],
    };
    let mut diag = SockDiag::open()?;
    let mut destroyed = 0;
    for &family in families {
        // Dump in full before destroying: the socket cannot take new requests mid-dump.
        for id in diag.dump(family, protocol, dst)? {
            if diag.destroy(family, protocol, id)? {
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

/// The remote end of a dumped socket, IPv4-mapped addresses made IPv4.
fn remote_end(family: u8, id: &InetDiagSockId) -> Option<SocketAddr> {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(id.idiag_dst) {
        // The words hold network-order bytes; keep them as they are in memory.
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::from([octets[0], octets[1], octets[2], octets[3]]),
        libc::AF_INET6 => IpAddr::from(octets).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be(id.idiag_dport)))
}

/// A NETLINK_SOCK_DIAG socket of the namespace it was opened in.
struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

// === impl SockDiag ===

impl SockDiag {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0, buf: vec![0; RECV_BUFFER] })
    }

    /// The sockets of `family` and `protocol` whose remote end is `dst`.
    fn dump(&mut self, family: u8, protocol: u8, dst: SocketAddr) -> io::Result<Vec<InetDiagSockId>> {
        let seq = self.send(SOCK_DIAG_BY_FAMILY, libc::NLM_F_DUMP, family, protocol, InetDiagSockId::default())?;
        let mut found = Vec::new();
        loop {
            let len = self.recv()?;
            let mut offset = 0;
            while let Some((header, payload)) = message(&self.buf[..len], &mut offset)? {
                if header.nlmsg_seq != seq {
                    continue;
                }
                match i32::from(header.nlmsg_type) {
                    libc::NLMSG_DONE => {
                        // A dump that failed (no diag module for the protocol, ...) says why here.
                        return match leading_i32(payload) {
                            Some(errno) if errno < 0 => Err(io::Error::from_raw_os_error(-errno)),
                            _ => Ok(found),
                        };
                    }
                    libc::NLMSG_ERROR => match leading_i32(payload) {
                        Some(0) => {}
                        Some(errno) => return Err(io::Error::from_raw_os_error(-errno)),
                        None => return Err(truncated("error message")),
                    },
                    _ if header.nlmsg_type == SOCK_DIAG_BY_FAMILY => {
                        if payload.len() < size_of::<InetDiagMsg>() {
                            return Err(truncated("inet_diag_msg"));
                        }
                        // SAFETY: the payload holds at least size_of::<InetDiagMsg>() bytes, the
                        // struct is plain integers (any bit pattern is valid) and the read is
                        // unaligned because the buffer is a byte vector.
                        let msg = unsafe { payload.as_ptr().cast::<InetDiagMsg>().read_unaligned() };
                        if remote_end(msg.idiag_family, &msg.id) == Some(dst) {
                            found.push(msg.id);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Aborts the socket `id`: true when it was destroyed, false when it had gone already.
    fn destroy(&mut self, family: u8, protocol: u8, id: InetDiagSockId) -> io::Result<bool> {
        let seq = self.send(SOCK_DESTROY, libc::NLM_F_ACK, family, protocol, id)?;
        loop {
            let len = self.recv()?;
            let mut offset = 0;
            while let Some((header, payload)) = message(&self.buf[..len], &mut offset)? {
                if header.nlmsg_seq != seq || i32::from(header.nlmsg_type) != libc::NLMSG_ERROR {
                    continue;
                }
                return match leading_i32(payload) {
                    Some(0) => Ok(true),
                    Some(errno) if -errno == libc::ENOENT => Ok(false),
                    Some(errno) => Err(io::Error::from_raw_os_error(-errno)),
                    None => Err(truncated("acknowledgement")),
                };
            }
        }
    }

    /// Sends one request; returns its sequence number.
    fn send(&mut self, kind: u16, flags: i32, family: u8, protocol: u8, id: InetDiagSockId) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let request = Request {
            header: libc::nlmsghdr {
                nlmsg_len: size_of::<Request>() as u32,
                nlmsg_type: kind,
                nlmsg_flags: (libc::NLM_F_REQUEST | flags) as u16,
                nlmsg_seq: self.seq,
                nlmsg_pid: 0,
            },
            body: InetDiagReqV2 { sdiag_family: family, sdiag_protocol: protocol, idiag_ext: 0, pad: 0, idiag_states: STATES, id },
        };
        // SAFETY: `request` lives across the call and is size_of::<Request>() bytes with no
        // padding (asserted above), so the kernel reads only initialised memory.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), (&request as *const Request).cast(), size_of::<Request>(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Receives one datagram into the buffer; returns its length.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid for writes of its length; MSG_TRUNC makes the result
            // the datagram's real length, so a truncation is seen, not parsed.
            let got = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_TRUNC) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let got = got as usize;
            if got > self.buf.len() {
                return Err(truncated("netlink datagram larger than the receive buffer"));
            }
            return Ok(got);
        }
    }
}

/// The next netlink message of `datagram` at `offset` (advanced past it): its header and payload.
fn message<'a>(datagram: &'a [u8], offset: &mut usize) -> io::Result<Option<(libc::nlmsghdr, &'a [u8])>> {
    let rest = &datagram[(*offset).min(datagram.len())..];
    if rest.len() < NLMSG_HDRLEN {
        return Ok(None);
    }
    // SAFETY: `rest` holds at least NLMSG_HDRLEN bytes, nlmsghdr is plain integers, and the read
    // is unaligned because the buffer is a byte vector.
    let header = unsafe { rest.as_ptr().cast::<libc::nlmsghdr>().read_unaligned() };
    let len = header.nlmsg_len as usize;
    if len < NLMSG_HDRLEN || len > rest.len() {
        return Err(truncated("netlink message"));
    }
    // Messages are 4-byte aligned within a datagram.
    *offset += (len + 3) & !3;
    Ok(Some((header, &rest[NLMSG_HDRLEN..len])))
}

/// The `int` that starts an NLMSG_ERROR or NLMSG_DONE payload (a negative errno, or 0).
fn leading_i32(payload: &[u8]) -> Option<i32> {
    payload.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_ne_bytes)
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed sock_diag reply: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(dst: [u8; 16], dport: u16) -> InetDiagSockId {
        let mut words = [0u32; 4];
        for (word, chunk) in words.iter_mut().zip(dst.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        InetDiagSockId { idiag_dport: dport.to_be(), idiag_dst: words, ..Default::default() }
    }

    #[test]
    fn remote_end_of_an_ipv4_socket_is_its_first_word_and_port() {
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, 7]);
        let got = remote_end(libc::AF_INET as u8, &id(dst, 8080));
        assert_eq!(got, Some("10.0.0.7:8080".parse().unwrap()), "IPv4 remote end");
    }

    #[test]
    fn remote_end_of_an_ipv4_mapped_ipv6_socket_is_ipv4() {
        let mapped: std::net::Ipv6Addr = "::ffff:10.0.0.7".parse().unwrap();
        let got = remote_end(libc::AF_INET6 as u8, &id(mapped.octets(), 80));
        assert_eq!(got, Some("10.0.0.7:80".parse().unwrap()), "mapped address must read as IPv4");
    }

    #[test]
    fn remote_end_of_an_ipv6_socket() {
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let got = remote_end(libc::AF_INET6 as u8, &id(v6.octets(), 443));
        assert_eq!(got, Some("[2001:db8::1]:443".parse().unwrap()), "IPv6 remote end");
    }

    #[test]
    fn messages_are_split_on_4_byte_boundaries_and_truncation_is_an_error() {
        let mut datagram = Vec::new();
        for (kind, payload) in [(libc::NLMSG_ERROR as u16, &[0xfe, 0xff, 0xff, 0xff, 9][..]), (libc::NLMSG_DONE as u16, &[0, 0, 0, 0][..])]
        {
            datagram.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
            datagram.extend_from_slice(&kind.to_ne_bytes());
            datagram.extend_from_slice(&[0; 10]);
            datagram.extend_from_slice(payload);
            datagram.resize((datagram.len() + 3) & !3, 0);
        }
        let mut offset = 0;
        let first = message(&datagram, &mut offset).ok().flatten().map(|(h, p)| (h.nlmsg_type, leading_i32(p)));
        assert_eq!(first, Some((libc::NLMSG_ERROR as u16, Some(-2))), "first message: an error of -2");
        let second = message(&datagram, &mut offset).ok().flatten().map(|(h, p)| (h.nlmsg_type, p.len()));
        assert_eq!(second, Some((libc::NLMSG_DONE as u16, 4)), "second message starts on the next 4-byte boundary");
        assert!(matches!(message(&datagram, &mut offset), Ok(None)), "nothing after the second message");
        let mut offset = 0;
        assert!(message(&datagram[..NLMSG_HDRLEN + 2], &mut offset).is_err(), "a message cut short is an error");
    }
}
