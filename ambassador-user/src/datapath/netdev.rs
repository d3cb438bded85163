//! What each interface's driver can do with XDP, from the kernel's generic netlink family
//! `netdev` (Linux 6.3+; `Documentation/netlink/specs/netdev.yaml`): one `dev-get` dump gives
//! every interface's `xdp-features`. The framing, the family lookup and the attributes'
//! encoding are netlink-packet-generic's and netlink-packet-core's; this module names the
//! family's two attributes it reads.

use std::{collections::BTreeMap, io};

use netlink_packet_core::{
    emit_u32, parse_u32, parse_u64, DecodeError, DefaultNla, Emitable, NetlinkPayload, Nla,
    NlaBuffer, NlasIterator, Parseable, ParseableParametrized, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlFamily, GenlHeader, GenlMessage,
};
use netlink_sys::protocols::NETLINK_GENERIC;

use crate::datapath::netlink::exchange;

/// `NETDEV_CMD_DEV_GET`.
const CMD_DEV_GET: u8 = 1;
/// `NETDEV_A_DEV_IFINDEX` (u32).
const ATTR_IFINDEX: u16 = 1;
/// `NETDEV_A_DEV_XDP_FEATURES` (u64, `enum netdev_xdp_act`).
const ATTR_XDP_FEATURES: u16 = 3;

/// `NETDEV_XDP_ACT_NDO_XMIT`: the driver transmits frames redirected to it by XDP (a veth only
/// while its peer can receive them: GRO or an XDP program on the peer).
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// How to make an interface of link kind `kind` take redirected frames, when it does not;
/// `reported`: whether the kernel says which interfaces do (Linux 6.3+). Before that a veth is
/// taken not to, whatever its peer has, since a wrong guess would drop frames silently.
pub fn redirect_fix(kind: Option<&str>, reported: bool) -> &'static str {
    if !reported {
        return "Linux 6.3 or later, which says whether an interface takes them";
    }
    match kind {
        Some("veth") => "GRO on its peer (`ethtool -K PEER gro on` in the peer's namespace) or an XDP program on the peer",
        _ => "a driver that transmits redirected frames (ndo_xdp_xmit)",
    }
}

/// One attribute of a `netdev` device message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DevAttr {
    Ifindex(u32),
    XdpFeatures(u64),
    Other(DefaultNla),
}

impl Nla for DevAttr {
    fn value_len(&self) -> usize {
        match self {
            DevAttr::Ifindex(_) => 4,
            DevAttr::XdpFeatures(_) => 8,
            DevAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DevAttr::Ifindex(_) => ATTR_IFINDEX,
            DevAttr::XdpFeatures(_) => ATTR_XDP_FEATURES,
            DevAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DevAttr::Ifindex(i) => emit_u32(buffer, *i).expect("4 bytes"),
            DevAttr::XdpFeatures(f) => buffer[..8].copy_from_slice(&f.to_ne_bytes()),
            DevAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DevAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            ATTR_IFINDEX => DevAttr::Ifindex(parse_u32(value)?),
            ATTR_XDP_FEATURES => DevAttr::XdpFeatures(parse_u64(value)?),
            _ => DevAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// A `netdev` family message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DevMessage {
    cmd: u8,
    attrs: Vec<DevAttr>,
}

impl GenlFamily for DevMessage {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for DevMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for DevMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| DevAttr::parse(&nla)))
            .collect::<Result<_, _>>()?;
        Ok(DevMessage {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// The id the kernel gave the `netdev` family (`None`: a kernel without it, before 6.3).
fn family_id() -> io::Result<Option<u16>> {
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(DevMessage::family_name().into())],
    });
    let mut id = None;
    let asked = exchange(
        NETLINK_GENERIC,
        request,
        NLM_F_REQUEST | NLM_F_ACK,
        |p: &NetlinkPayload<GenlMessage<GenlCtrl>>| {
            if let NetlinkPayload::InnerMessage(m) = p {
                id = m.payload.nlas.iter().find_map(|a| match a {
                    GenlCtrlAttrs::FamilyId(id) => Some(*id),
                    _ => None,
                });
            }
        },
    );
    match asked {
        Ok(()) => Ok(id),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every interface's XDP features (`NETDEV_XDP_ACT_*` bits) in the calling thread's network
/// namespace, by interface index; `None` on a kernel that does not report them (before 6.3).
pub fn xdp_features() -> io::Result<Option<BTreeMap<u32, u64>>> {
    let Some(family) = family_id()? else {
        return Ok(None);
    };
    let mut request = GenlMessage::from_payload(DevMessage {
        cmd: CMD_DEV_GET,
        attrs: Vec::new(),
    });
    request.set_resolved_family_id(family);
    let mut features = BTreeMap::new();
    exchange(
        NETLINK_GENERIC,
        request,
        NLM_F_REQUEST | NLM_F_DUMP,
        |p: &NetlinkPayload<GenlMessage<DevMessage>>| {
            if let NetlinkPayload::InnerMessage(m) = p {
                let mut index = None;
                let mut bits = 0;
                for a in &m.payload.attrs {
                    match a {
                        DevAttr::Ifindex(i) => index = Some(*i),
                        DevAttr::XdpFeatures(f) => bits = *f,
                        DevAttr::Other(_) => {}
                    }
                }
                if let Some(i) = index {
                    features.insert(i, bits);
                }
            }
        },
    )?;
    Ok(Some(features))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device message as the kernel sends it round-trips through the attribute code.
    #[test]
    fn device_attributes_round_trip() {
        let msg = DevMessage {
            cmd: CMD_DEV_GET,
            attrs: vec![DevAttr::Ifindex(7), DevAttr::XdpFeatures(0x67)],
        };
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let header = GenlHeader {
            cmd: CMD_DEV_GET,
            version: 1,
        };
        assert_eq!(DevMessage::parse_with_param(&buf, header).unwrap(), msg);
    }
}
