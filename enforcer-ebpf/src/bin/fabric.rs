//! The simulated VPC fabric's side of the trunk (test and demo infrastructure, not the
//! product): it tags frames toward a branch ENI with that ENI's VLAN and untags frames
//! coming from the trunk, which a VPC does in hardware.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    btf_maps::{Array, HashMap},
    helpers::{bpf_redirect, bpf_skb_vlan_pop, bpf_xdp_adjust_meta},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use enforcer_common::vouch::{VOUCH_LEN, Vouch};
use enforcer_ebpf::{
    parse::parse_l2,
    rewrite::{mac_words, push_tag},
};

/// Frames received per VLAN id (proves which tag a pod's traffic carried on the wire).
#[btf_map]
static FABRIC_VLAN_SEEN: HashMap<u32, u64, 4096> = HashMap::new();

/// Which VLAN carries frames to a branch ENI's MAC.
#[btf_map]
static FABRIC_VLAN_BY_MAC: HashMap<[u8; 8], u32, 4096> = HashMap::new();

/// The forwarding floor's one setting (written by the benchmark): the trunk's ifindex,
/// the VLAN, then the destination and source MACs — podsg's forwarding, with no pod
/// look-up and no policy.
#[btf_map]
static FLOOR_FORWARD: Array<[u32; 5], 1> = Array::new();

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
    // SAFETY: a hash value stays valid for the program's run (RCU).
    let Some(vlan) = (unsafe { FABRIC_VLAN_BY_MAC.get(key) }) else {
        return TC_ACT_OK;
    };
    let _ = push_tag(&ctx, *vlan as u16, &mac_words(&dst, &src));
    TC_ACT_OK
}

#[classifier]
pub fn sim_fabric_ingress(ctx: TcContext) -> i32 {
    if let Ok(l2) = parse_l2(&ctx)
        && let Some(vlan) = l2.vlan
    {
        let key = vlan as u32;
        match FABRIC_VLAN_SEEN.get_ptr_mut(key) {
            // SAFETY: a valid map value for the program's run; a lost increment under
            // a race only undercounts a test statistic.
            Some(n) => unsafe { *n += 1 },
            None => {
                let _ = FABRIC_VLAN_SEEN.insert(key, 1u64, 0);
            }
        }
        // SAFETY: the helper takes the program's own skb.
        unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
    }
    TC_ACT_OK
}

/// The benchmarks' redirect-only floor (never attached): what any datapath that
/// delivers a frame elsewhere costs at least — parse the Ethernet header, redirect.
#[classifier]
pub fn sim_floor_redirect(ctx: TcContext) -> i32 {
    if parse_l2(&ctx).is_err() {
        return TC_ACT_OK;
    }
    // SAFETY: a plain helper call with no pointers.
    unsafe { bpf_redirect(1, 0) as i32 }
}

/// The benchmarks' forwarding floor: what podsg does to an established flow's frame
/// without deciding anything — one array read for where it goes, VLAN tag and MACs
/// (podsg's own `push_tag`), redirect to the trunk.
#[classifier]
pub fn sim_floor_forward(ctx: TcContext) -> i32 {
    if parse_l2(&ctx).is_err() {
        return TC_ACT_OK;
    }
    let Some(f) = FLOOR_FORWARD.get(0) else {
        return TC_ACT_SHOT;
    };
    let (ifindex, vlan) = (f[0], f[1] as u16);
    if push_tag(&ctx, vlan, &[f[2], f[3], f[4]]).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: a plain helper call with no pointers.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// The VPC's frame generator (never attached): run by `BPF_PROG_TEST_RUN` in live-frames
/// mode on the fabric's end of the trunk, each frame goes out of it as an XDP frame,
/// and the trunk's driver receives it as a NIC's DMA buffer — no skb until the stack
/// needs one, which is what an XDP program on a real trunk sees.
#[xdp]
pub fn sim_fabric_xmit(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Another tool's XDP program on the trunk (tests only): it passes everything, and
/// holds the hook, so the daemon's pre-filter cannot attach.
#[xdp]
pub fn sim_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// What `sim_forge_vouch` writes (set by the test at load).
#[unsafe(no_mangle)]
static SIM_FORGED_VOUCH: Vouch = Vouch::NONE;

/// An attacker's XDP program on the trunk (tests only): it writes `SIM_FORGED_VOUCH`
/// in front of every frame, claiming for it what `trunk_xdp` says of a copied reply.
#[xdp]
pub fn sim_forge_vouch(ctx: XdpContext) -> u32 {
    // SAFETY: a read of our own global (volatile: the loader rewrites it).
    let v = unsafe { core::ptr::read_volatile(&SIM_FORGED_VOUCH) };
    // SAFETY: the helper takes the program's own context; pointers are read after.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(VOUCH_LEN as i32)) } != 0 {
        return xdp_action::XDP_PASS;
    }
    let meta = ctx.metadata();
    if meta + VOUCH_LEN <= ctx.data() {
        // SAFETY: bounds-checked against the start of the frame just above; a typed
        // store, as `trunk_xdp` writes its own.
        unsafe { *(meta as *mut Vouch) = v };
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
