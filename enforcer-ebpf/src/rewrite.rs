//! Frame rewrites shared by the programs: MAC addresses, the VLAN tag.
use aya_ebpf::{helpers::bpf_skb_vlan_push, programs::TcContext};

use crate::parse::ETH_P_8021Q;

/// The step of a rewrite that failed, named in the internal-error log.
pub type Step = &'static str;

pub use enforcer_common::mac_words;

/// Rewrites both MAC addresses in place (packet pointers re-read: the helper that ran
/// before may have moved the data).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), Step> {
    write_macs(ctx, &mac_words(dst, src))
}

/// Writes a header's MAC words (`mac_words`) in place.
#[inline(always)]
pub fn write_macs(ctx: &TcContext, w: &[u32; 3]) -> Result<(), Step> {
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return Err("MAC rewrite");
    }
    // SAFETY: the 12 bytes written were checked to lie inside the packet just above.
    unsafe {
        *(data as *mut u32) = w[0];
        *((data + 4) as *mut u32) = w[1];
        *((data + 8) as *mut u32) = w[2];
    }
    Ok(())
}

/// Tags the frame with the pod's VLAN and writes its MACs (`mac_words`: to the VPC
/// router, from the pod). The tag goes
/// into skb metadata (`bpf_skb_vlan_push`): the trunk NIC inserts it on the wire (tx VLAN
/// offload, or the stack in software), and a veth peer receives it as metadata. Writing
/// it into the bytes instead (`bpf_skb_adjust_room`) measured ~800 ns per packet: a
/// locally built skb has ~2 bytes of headroom left, so every packet was reallocated.
#[inline(always)]
pub fn push_tag(ctx: &TcContext, vlan: u16, macs: &[u32; 3]) -> Result<(), Step> {
    // SAFETY: the helper takes the program's own skb; packet pointers are re-read after.
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), vlan & 0x0fff) } != 0 {
        return Err("VLAN push");
    }
    write_macs(ctx, macs)
}
