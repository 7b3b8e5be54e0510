//! Policy routing over rtnetlink: the `fwmark MARK/MASK lookup TABLE` rule and the
//! `local default dev lo table TABLE` route, as `ip rule` / `ip route` would send them.

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use super::{Msg, NetlinkError, Socket, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_HOST: u8 = 254;
const RT_SCOPE_NOWHERE: u8 = 255;

/// Stop deleting duplicates after this many (only a runaway loop gets there).
const MAX_DUPLICATES: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => 2,  // AF_INET
            Family::V6 => 10, // AF_INET6
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Whether a call changed anything: what [`crate::redirect::apply`] must undo on failure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    Created,
    AlreadyThere,
}

/// `fwmark MARK/MASK priority PRIORITY lookup TABLE`.
#[derive(Clone, Copy, Debug)]
pub struct FwmarkRule {
    pub family: Family,
    pub mark: u32,
    pub mask: u32,
    pub priority: u32,
    pub table: u32,
}

/// The `table` byte of the fixed headers: tables above 255 only fit in the attribute.
fn table_byte(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}

/// A netlink route socket in the calling thread's namespace.
pub struct Rtnl(Socket);

impl Rtnl {
    pub fn open() -> Result<Rtnl, NetlinkError> {
        Socket::open(SockProtocol::NetlinkRoute).map(Rtnl)
    }

    fn rule_msg(kind: u16, flags: u16, r: &FwmarkRule) -> Msg {
        // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
        let mut hdr = [0u8; 12];
        hdr[0] = r.family.af();
        hdr[4] = table_byte(r.table);
        hdr[7] = FR_ACT_TO_TBL;
        Msg::new(kind, flags)
            .header(&hdr)
            .attr_u32(FRA_PRIORITY, r.priority)
            .attr_u32(FRA_FWMARK, r.mark)
            .attr_u32(FRA_FWMASK, r.mask)
            .attr_u32(FRA_TABLE, r.table)
    }

    /// `ip rule add`: the kernel refuses an identical rule (EEXIST) instead of adding a
    /// duplicate, so this is idempotent.
    pub fn add_rule(&mut self, r: &FwmarkRule) -> Result<Change, NetlinkError> {
        let msg = Self::rule_msg(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, r);
        let op = format!("adding the {} fwmark rule", r.family.name());
        match self.0.request(&op, msg) {
            Ok(()) => Ok(Change::Created),
            Err(e) if e.errno == Errno::EEXIST => Ok(Change::AlreadyThere),
            Err(e) => Err(e),
        }
    }

    /// `ip rule del` until none is left (older agents could leave duplicates); returns how
    /// many were deleted.
    pub fn delete_rules(&mut self, r: &FwmarkRule) -> Result<usize, NetlinkError> {
        let op = format!("deleting the {} fwmark rule", r.family.name());
        for deleted in 0..MAX_DUPLICATES {
            match self.0.request(&op, Self::rule_msg(RTM_DELRULE, 0, r)) {
                Ok(()) => {}
                Err(e) if e.errno == Errno::ENOENT => return Ok(deleted),
                Err(e) => return Err(e),
            }
        }
        Ok(MAX_DUPLICATES)
    }

    fn route_msg(kind: u16, flags: u16, family: Family, table: u32, lo: u32) -> Msg {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut hdr = [0u8; 12];
        hdr[0] = family.af();
        hdr[4] = table_byte(table);
        if kind == RTM_NEWROUTE {
            hdr[5] = RTPROT_BOOT;
            hdr[6] = RT_SCOPE_HOST;
        } else {
            // Match any protocol and scope, as `ip route del` does.
            hdr[6] = RT_SCOPE_NOWHERE;
        }
        hdr[7] = RTN_LOCAL;
        Msg::new(kind, flags)
            .header(&hdr)
            .attr_u32(RTA_TABLE, table)
            .attr_u32(RTA_OIF, lo)
    }

    /// `ip route replace local default dev lo table TABLE`, telling whether it created the
    /// route (a route already there is replaced, which fixes one that differs).
    pub fn ensure_local_default(
        &mut self,
        family: Family,
        table: u32,
        lo: u32,
    ) -> Result<Change, NetlinkError> {
        let op = format!("adding the {} local default route", family.name());
        let create = Self::route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, family, table, lo);
        match self.0.request(&op, create) {
            Ok(()) => Ok(Change::Created),
            Err(e) if e.errno == Errno::EEXIST => {
                let replace = Self::route_msg(
                    RTM_NEWROUTE,
                    NLM_F_CREATE | NLM_F_REPLACE,
                    family,
                    table,
                    lo,
                );
                self.0.request(&op, replace)?;
                Ok(Change::AlreadyThere)
            }
            Err(e) => Err(e),
        }
    }

    /// `ip route del local default dev lo table TABLE`; `Ok(false)` when it was not there.
    pub fn delete_local_default(
        &mut self,
        family: Family,
        table: u32,
        lo: u32,
    ) -> Result<bool, NetlinkError> {
        let op = format!("deleting the {} local default route", family.name());
        match self
            .0
            .request(&op, Self::route_msg(RTM_DELROUTE, 0, family, table, lo))
        {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno, Errno::ESRCH | Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
