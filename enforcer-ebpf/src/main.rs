//! podsg datapath: security groups per pod, enforced at the trunk, at each pod's
//! host-side interface (both ways) and, for source NAT, at the primary ENI. The entry
//! points are thin: each runs its path (`trunk`, `pod`, `to_pod`, `primary`) and turns
//! the outcome into a TC action; the stages live in their own files.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
// `#[inline(always)]` on the fast paths' closures (`fast::recognise` calls them twice,
// once per family, and LLVM otherwise keeps them as BPF-to-BPF calls).
#![feature(stmt_expr_attributes)]
#![expect(
    internal_features,
    reason = "atomic_xadd: core atomics have no read-modify-write on the BPF target"
)]

mod bypass;
mod cache;
mod conntrack;
mod counters;
mod dest;
mod events;
mod exit;
mod fast;
mod fragments;
mod maps;
mod pod;
mod policy;
mod primary;
mod snat;
mod to_pod;
mod trunk;
mod trunk_xdp;
mod verdict;
mod vouch;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Frames from the VPC: one VLAN per branch ENI. Checks the pod's inbound rules, strips
/// the tag and hands the frame to the pod's interface.
#[classifier]
pub fn trunk_ingress(ctx: TcContext) -> i32 {
    exit::finish(&ctx, fast::inbound(&ctx))
}

/// Every frame `trunk_ingress` does not deliver by its fast path, tail-called: the full
/// judgement, from the start.
#[classifier]
pub fn trunk_ingress_full(ctx: TcContext) -> i32 {
    exit::finish(&ctx, trunk::run(&ctx))
}

/// Frames from the VPC, before the kernel builds an skb: drops what `trunk_ingress`
/// would and can be told early (unknown VLAN, misaddressed, no rule), passes the rest.
/// Multi-buffer capable, so jumbo frames on the trunk do not keep it from attaching.
#[xdp(frags)]
pub fn trunk_xdp(ctx: XdpContext) -> u32 {
    trunk_xdp::run(&ctx)
}

/// Frames from a pod (TC ingress of its host-side veth): anti-spoofing, the pod's
/// outbound rules, then out of the trunk with the pod's VLAN tag.
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    exit::finish(&ctx, fast::out(&ctx))
}

/// Every packet `pod_egress` does not forward by its fast path, tail-called: the full
/// judgement, from the start.
#[classifier]
pub fn pod_egress_full(ctx: TcContext) -> i32 {
    exit::finish(&ctx, pod::run(&ctx))
}

/// Traffic from a pod to another pod of the node (tail-called by `pod_egress`): the
/// receiver's inbound rules, then straight to its host interface.
#[classifier]
pub fn pod_host_local(ctx: TcContext) -> i32 {
    exit::finish(&ctx, pod::host_local(&ctx))
}

/// Frames the node sends a pod (TC egress of its host-side veth): the pod's inbound
/// rules, or standard mode's host-local bypass for the node's own addresses.
#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    exit::finish(&ctx, to_pod::run(&ctx))
}

/// Frames arriving on the node's primary ENI: replies to source-NATed flows go back to
/// their pod; the rest is the node's.
#[classifier]
pub fn primary_ingress(ctx: TcContext) -> i32 {
    exit::finish(&ctx, primary::run(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
