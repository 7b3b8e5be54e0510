//! The nf_tables requests the agent makes without `nft`: does a table exist, delete a table,
//! add or delete one IPv4 element of a set. Rules themselves are still loaded with one
//! `nft -f` transaction (their expression encoding is nft's business).

use std::net::Ipv4Addr;

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use super::{Msg, NetlinkError, Socket, NLM_F_CREATE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// nftables address families (`NFPROTO_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NftFamily {
    Inet = 1,
    Ip = 2,
}

fn kind(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn nfgenmsg(family: NftFamily) -> [u8; 4] {
    [family as u8, 0, 0, 0]
}

/// The batch markers carry the subsystem id, big-endian, in `res_id`.
pub(crate) fn nfgenmsg_batch() -> [u8; 4] {
    let id = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    [0, 0, id[0], id[1]]
}

fn open() -> Result<Socket, NetlinkError> {
    Socket::open(SockProtocol::NetlinkNetFilter)
}

/// True when `family name` exists in the calling thread's namespace.
pub fn table_exists(family: NftFamily, name: &str) -> Result<bool, NetlinkError> {
    let msg = Msg::new(kind(NFT_MSG_GETTABLE), 0)
        .header(&nfgenmsg(family))
        .attr_str(NFTA_TABLE_NAME, name);
    match open()?.request(&format!("looking up nftables table {name}"), msg) {
        Ok(()) => Ok(true),
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `family name` with everything in it; `Ok(false)` when it did not exist.
pub fn delete_table(family: NftFamily, name: &str) -> Result<bool, NetlinkError> {
    let msg = Msg::new(kind(NFT_MSG_DELTABLE), 0)
        .header(&nfgenmsg(family))
        .attr_str(NFTA_TABLE_NAME, name);
    match open()?.nft_batch(&format!("deleting nftables table {name}"), msg) {
        Ok(()) => Ok(true),
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

fn set_element_msg(msg: u16, flags: u16, table: &str, set: &str, ip: Ipv4Addr) -> Msg {
    Msg::new(kind(msg), flags)
        .header(&nfgenmsg(NftFamily::Ip))
        .attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        .attr_str(NFTA_SET_ELEM_LIST_SET, set)
        .nested(NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
            m.nested(NFTA_LIST_ELEM, |m| {
                m.nested(NFTA_SET_ELEM_KEY, |m| m.attr(NFTA_DATA_VALUE, &ip.octets()))
            })
        })
}

/// `nft add element ip TABLE SET { IP }`: idempotent (no NLM_F_EXCL). ENOENT when the
/// table or set does not exist.
pub fn add_element(table: &str, set: &str, ip: Ipv4Addr) -> Result<(), NetlinkError> {
    let msg = set_element_msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, table, set, ip);
    open()?.nft_batch(&format!("adding {ip} to nftables set {table}/{set}"), msg)
}

/// `nft delete element ip TABLE SET { IP }`; `Ok(false)` when the element (or the table or
/// set) was not there.
pub fn delete_element(table: &str, set: &str, ip: Ipv4Addr) -> Result<bool, NetlinkError> {
    let msg = set_element_msg(NFT_MSG_DELSETELEM, 0, table, set, ip);
    match open()?.nft_batch(
        &format!("removing {ip} from nftables set {table}/{set}"),
        msg,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}
