//! Outbound NAT for the bridge with nf_tables over netlink (the guest has neither `nft` nor
//! `iptables`): table `ip berth`, chain `postrouting` (type nat, hook postrouting, priority
//! srcnat), one rule: `ip saddr <subnet> oifname != "berth0" masquerade`. Written in the calling
//! thread's network namespace; applying it again replaces the table.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::netlink::Attrs;
use super::Subnet;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;

const NFPROTO_IPV4: u8 = 2;
const AF_UNSPEC: u8 = 0;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;

const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_ACCEPT: u32 = 1;
const NF_IP_PRI_NAT_SRC: i32 = 100;

const TABLE: &str = "berth";
const CHAIN: &str = "postrouting";

/// A batch of netfilter messages.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    /// Start of the message being built, and of open nests.
    msg: usize,
    nests: Vec<usize>,
    seq: u32,
    acked: u32,
}

impl Attrs for Batch {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
    fn nests(&mut self) -> &mut Vec<usize> {
        &mut self.nests
    }
}

impl Batch {
    fn begin(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> &mut Batch {
        self.pad();
        self.msg = self.buf.len();
        self.seq += 1;
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg: family, version 0, resource id (big-endian).
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        if flags & NLM_F_ACK != 0 {
            self.acked += 1;
        }
        self
    }

    fn nft(&mut self, msg: u16, flags: u16) -> &mut Batch {
        self.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags | NLM_F_ACK,
            NFPROTO_IPV4,
            0,
        )
    }

    fn end_msg(&mut self) -> &mut Batch {
        assert!(self.nests.is_empty(), "unclosed nest");
        self.pad();
        let len = (self.buf.len() - self.msg) as u32;
        self.buf[self.msg..self.msg + 4].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn be32(&mut self, kind: u16, v: u32) -> &mut Batch {
        self.attr(kind, &v.to_be_bytes())
    }

    fn data(&mut self, kind: u16, value: &[u8]) -> &mut Batch {
        self.nest(kind).attr(NFTA_DATA_VALUE, value).end()
    }

    /// One expression of a rule: `name` with its attributes written by `f`.
    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Batch)) -> &mut Batch {
        self.nest(NFTA_LIST_ELEM).attr_str(NFTA_EXPR_NAME, name);
        self.nest(NFTA_EXPR_DATA);
        f(self);
        self.end().end()
    }

    fn batch_edge(&mut self, kind: u16) -> &mut Batch {
        self.begin(kind, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES)
            .end_msg()
    }
}

/// The rule set as one batch: (re)create the table, its NAT chain and the masquerade rule.
fn ruleset(subnet: Subnet, bridge: &str) -> Batch {
    let mut b = Batch::default();
    b.batch_edge(NFNL_MSG_BATCH_BEGIN);
    b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE)
        .attr_str(NFTA_TABLE_NAME, TABLE)
        .end_msg();
    b.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
        .attr_str(NFTA_CHAIN_TABLE, TABLE)
        .attr_str(NFTA_CHAIN_NAME, CHAIN)
        .nest(NFTA_CHAIN_HOOK)
        .be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING)
        .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC as u32)
        .end()
        .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .attr_str(NFTA_CHAIN_TYPE, "nat")
        .end_msg();
    let mask = (u32::MAX << (32 - subnet.prefix)).to_be_bytes();
    let mut ifname = [0u8; 16];
    ifname[..bridge.len()].copy_from_slice(bridge.as_bytes());
    b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
        .attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, CHAIN)
        .nest(NFTA_RULE_EXPRESSIONS)
        // ip saddr & mask == subnet
        .expr("payload", |b| {
            b.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
                .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER)
                .be32(NFTA_PAYLOAD_OFFSET, 12)
                .be32(NFTA_PAYLOAD_LEN, 4);
        })
        .expr("bitwise", |b| {
            b.be32(NFTA_BITWISE_SREG, NFT_REG_1)
                .be32(NFTA_BITWISE_DREG, NFT_REG_1)
                .be32(NFTA_BITWISE_LEN, 4)
                .data(NFTA_BITWISE_MASK, &mask)
                .data(NFTA_BITWISE_XOR, &[0; 4]);
        })
        .expr("cmp", |b| {
            b.be32(NFTA_CMP_SREG, NFT_REG_1)
                .be32(NFTA_CMP_OP, NFT_CMP_EQ)
                .data(NFTA_CMP_DATA, &subnet.network.octets());
        })
        // oifname != bridge (traffic between containers stays as it is)
        .expr("meta", |b| {
            b.be32(NFTA_META_DREG, NFT_REG_1)
                .be32(NFTA_META_KEY, NFT_META_OIFNAME);
        })
        .expr("cmp", |b| {
            b.be32(NFTA_CMP_SREG, NFT_REG_1)
                .be32(NFTA_CMP_OP, NFT_CMP_NEQ)
                .data(NFTA_CMP_DATA, &ifname);
        })
        .expr("masq", |_| {})
        .end()
        .end_msg();
    b.batch_edge(NFNL_MSG_BATCH_END);
    b
}

/// Deletes the table when it exists: a batch of its own, whose "no such table" is fine.
fn delete_table() -> Batch {
    let mut b = Batch::default();
    b.batch_edge(NFNL_MSG_BATCH_BEGIN);
    b.nft(NFT_MSG_DELTABLE, 0)
        .attr_str(NFTA_TABLE_NAME, TABLE)
        .end_msg();
    b.batch_edge(NFNL_MSG_BATCH_END);
    b
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends a batch and reads an acknowledgement for each of its messages that asked for one.
fn send(fd: &OwnedFd, b: &Batch) -> io::Result<()> {
    // SAFETY: `b.buf` is a valid buffer of the length given.
    let n = unsafe { libc::send(fd.as_raw_fd(), b.buf.as_ptr().cast(), b.buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut acks = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while acks < b.acked {
        // SAFETY: `buf` is a valid writable buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let (n, mut off) = (n as usize, 0usize);
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < 16 || off + len > n {
                return Err(io::Error::other("malformed netlink answer"));
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                acks += 1;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

/// Installs `ip saddr <subnet> oifname != <bridge> masquerade` in the calling thread's
/// network namespace, replacing an earlier copy.
pub fn masquerade(subnet: Subnet, bridge: &str) -> io::Result<()> {
    assert!(
        bridge.len() < 16,
        "interface names are shorter than 16 bytes"
    );
    let fd = socket()?;
    match send(&fd, &delete_table()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    send(&fd, &ruleset(subnet, bridge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_well_formed() {
        let b = ruleset("172.30.0.0/16".parse().unwrap(), "berth0");
        assert_eq!(b.buf.len() % 4, 0);
        // Walk the messages: every length lands on the next header, and the end is exact.
        let mut off = 0;
        let mut kinds = Vec::new();
        while off < b.buf.len() {
            let len = u32::from_ne_bytes(b.buf[off..off + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes(
                b.buf[off + 4..off + 6].try_into().unwrap(),
            ));
            off += len;
        }
        assert_eq!(off, b.buf.len());
        let nft = |m: u16| (NFNL_SUBSYS_NFTABLES << 8) | m;
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(b.acked, 3);
    }

    /// Root only: the kernel accepts the rule set (twice: re-applying replaces it) in a
    /// throw-away network namespace.
    #[test]
    fn the_kernel_accepts_the_rules() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let r = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = "172.30.0.0/16".parse().unwrap();
            masquerade(s, "berth0").and_then(|()| masquerade(s, "berth0"))
        })
        .join()
        .unwrap();
        match r {
            Ok(()) => {}
            // A kernel without nf_tables (or its NAT parts) cannot be tested here.
            Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
                eprintln!("skipped: no nf_tables: {e}")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
