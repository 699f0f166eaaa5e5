//! A small rtnetlink client: just the requests the container network needs (create a bridge and
//! veth pairs, set links up, enslave, rename, addresses, a default route, delete a link).
//! Hand-written rather than a crate because it is a few hundred lines, synchronous (it runs on
//! a thread that entered the right network namespace) and keeps the static musl core small.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, so a
//! [`Netlink`] acts on the namespace its creator was in.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// Message types and flags (linux/netlink.h, linux/rtnetlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

// Link attributes (linux/if_link.h, linux/veth.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;

// Address and route attributes (linux/if_addr.h, linux/rtnetlink.h).
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 1;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;

/// Netlink attributes (type-length-value, 4-byte aligned, nestable), written the same way by
/// rtnetlink requests here and by nftables batches (`super::nft`).
pub(super) trait Attrs: Sized {
    fn buf(&mut self) -> &mut Vec<u8>;
    /// Offsets of the nested attributes still open.
    fn nests(&mut self) -> &mut Vec<usize>;

    fn pad(&mut self) {
        let buf = self.buf();
        while buf.len() & 3 != 0 {
            buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        self.pad();
        let buf = self.buf();
        buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// A NUL-terminated string.
    fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(kind, &b)
    }

    /// Opens a nested attribute; [`Attrs::end`] closes it and sets its length.
    fn nest(&mut self, kind: u16) -> &mut Self {
        self.pad();
        let start = self.buf().len();
        self.nests().push(start);
        let buf = self.buf();
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let start = self.nests().pop().expect("an open nest");
        let buf = self.buf();
        let len = (buf.len() - start) as u16;
        buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

/// A netlink request under construction: header, fixed part, attributes.
struct Msg {
    buf: Vec<u8>,
    /// Offsets of open nested attributes.
    nests: Vec<usize>,
}

impl Attrs for Msg {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
    fn nests(&mut self) -> &mut Vec<usize> {
        &mut self.nests
    }
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set when sent
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    /// `struct ifinfomsg`.
    fn ifinfo(&mut self, index: u32, flags: u32, change: u32) -> &mut Msg {
        self.buf.push(AF_UNSPEC);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes()); // type
        self.buf.extend_from_slice(&(index as i32).to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
        self
    }

    fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        assert!(self.nests.is_empty(), "unclosed nested attribute");
        self.pad();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// An rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all zeroes is the kernel-assigned address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `addr` is a valid sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends one request and waits for its acknowledgement; a kernel error becomes an
    /// `io::Error` with its errno.
    fn request(&mut self, msg: &mut Msg) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        // SAFETY: `bytes` is a valid buffer of the length given.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: `buf` is a valid writable buffer of the length given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes"));
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
                let rseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
                let len = len as usize;
                if len < 16 || off + len > n {
                    return Err(io::Error::other("malformed netlink answer"));
                }
                if rseq == seq {
                    match kind {
                        NLMSG_ERROR if len >= 20 => {
                            let code = i32::from_ne_bytes(
                                buf[off + 16..off + 20].try_into().expect("4 bytes"),
                            );
                            return if code == 0 {
                                Ok(())
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        NLMSG_DONE => return Ok(()),
                        _ => {}
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Creates a bridge; `Ok(false)` when a link of that name exists already.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, name)
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        match self.request(&mut m) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair `name` (here) ↔ `peer`, the peer in the network namespace `peer_ns`
    /// (an open namespace file) when given.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_ns: Option<RawFd>) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, name)
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .nest(IFLA_INFO_DATA)
            .nest(VETH_INFO_PEER)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, peer);
        if let Some(fd) = peer_ns {
            m.attr_u32(IFLA_NET_NS_FD, fd as u32);
        }
        m.end().end().end();
        self.request(&mut m)
    }

    /// Changes a link: up, its master (bridge), its MAC address.
    pub fn set_link(
        &mut self,
        index: u32,
        up: bool,
        master: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index, if up { IFF_UP } else { 0 }, IFF_UP);
        if let Some(master) = master {
            m.attr_u32(IFLA_MASTER, master);
        }
        if let Some(mac) = mac {
            m.attr(IFLA_ADDRESS, &mac);
        }
        self.request(&mut m)
    }

    /// Adds an IPv4 address; one already there is fine.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        m.buf.push(AF_INET);
        m.buf.push(prefix);
        m.buf.push(0); // flags
        m.buf.push(RT_SCOPE_UNIVERSE);
        m.buf.extend_from_slice(&index.to_ne_bytes());
        m.attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        let host_bits = 32 - u32::from(prefix);
        if host_bits >= 2 {
            let bcast = u32::from(addr) | ((1u32 << host_bits) - 1);
            m.attr(IFA_BROADCAST, &Ipv4Addr::from(bcast).octets());
        }
        match self.request(&mut m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Adds the default route via `gateway` on link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        m.buf.extend_from_slice(&[
            AF_INET,
            0, // dst_len: the default route
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.attr(RTA_GATEWAY, &gateway.octets())
            .attr_u32(RTA_OIF, index);
        self.request(&mut m)
    }

    /// Deletes a link; one that does not exist is fine.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(index, 0, 0);
        match self.request(&mut m) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r,
        }
    }
}

/// The index of a link in the calling thread's network namespace.
pub fn link_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface {name:?}"),
        ))
    } else {
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_aligned_and_nested() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE);
        m.ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, "abc")
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .end();
        let b = m.finish(9).to_vec();
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        // After the 16-byte header and the 16-byte ifinfomsg: IFLA_IFNAME "abc\0".
        assert_eq!(u16::from_ne_bytes(b[32..34].try_into().unwrap()), 8);
        assert_eq!(
            u16::from_ne_bytes(b[34..36].try_into().unwrap()),
            IFLA_IFNAME
        );
        assert_eq!(&b[36..40], b"abc\0");
        // The nest covers its child: 4 (own header) + 4 + "veth\0" padded to 8.
        assert_eq!(u16::from_ne_bytes(b[40..42].try_into().unwrap()), 16);
        assert_eq!(
            u16::from_ne_bytes(b[42..44].try_into().unwrap()),
            IFLA_LINKINFO | NLA_F_NESTED
        );
    }
}
