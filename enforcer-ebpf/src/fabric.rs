//! The simulated VPC fabric's side of the trunk (test and demo infrastructure, not the
//! product): it tags frames toward a branch ENI with that ENI's VLAN and untags frames
//! coming from the trunk, which a VPC does in hardware.
use aya_ebpf::{
    bindings::TC_ACT_OK, helpers::bpf_skb_vlan_pop, macros::classifier, programs::TcContext,
};

use crate::maps::{FABRIC_VLAN_BY_MAC, FABRIC_VLAN_SEEN};
use crate::parse::parse_l2;

#[classifier]
pub fn sim_fabric_egress(ctx: TcContext) -> i32 {
    let Ok(l2) = parse_l2(&ctx) else {
        return TC_ACT_OK;
    };
    if l2.vlan.is_some() {
        return TC_ACT_OK;
    }
    let Ok(dst) = ctx.load::<[u8; 6]>(0) else {
        return TC_ACT_OK;
    };
    let Ok(src) = ctx.load::<[u8; 6]>(6) else {
        return TC_ACT_OK;
    };
    let key = [dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], 0, 0];
    let Some(vlan) = (unsafe { FABRIC_VLAN_BY_MAC.get(key) }) else {
        return TC_ACT_OK;
    };
    let _ = crate::push_tag(&ctx, *vlan as u16, &dst, &src);
    TC_ACT_OK
}

#[classifier]
pub fn sim_fabric_ingress(ctx: TcContext) -> i32 {
    if let Ok(l2) = parse_l2(&ctx)
        && let Some(vlan) = l2.vlan
    {
        let key = vlan as u32;
        match FABRIC_VLAN_SEEN.get_ptr_mut(key) {
            Some(n) => unsafe { *n += 1 },
            None => {
                let _ = FABRIC_VLAN_SEEN.insert(key, 1u64, 0);
            }
        }
        unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
    }
    TC_ACT_OK
}
