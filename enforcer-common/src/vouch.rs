//! What `trunk_xdp` hands `trunk_ingress` with a reply it found the flow copy of: the
//! frame's XDP metadata (the bytes before its Ethernet header, which the kernel keeps
//! with the skb up to TC), so that TC delivers the frame on the pre-filter's word
//! instead of finding the same copy again.
//!
//! Only what carries the load's cookie is believed: a random word the loader sets in
//! both programs (the global [`VOUCH_COOKIE`]), so metadata another XDP program wrote,
//! or a previous load's, is never taken for ours. A cookie of 0 (not set) vouches for
//! nothing.

/// The global both programs read the cookie from.
pub const VOUCH_COOKIE: &str = "PODSG_VOUCH_COOKIE";

/// The metadata: where and how to deliver the frame, as the flow's copy said.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vouch {
    pub cookie: u32,
    /// The pod's counters slot.
    pub slot: u32,
    /// The pod's host interface.
    pub host_ifindex: u32,
    /// The delivered frame's MACs ([`crate::mac_words`]): to the pod, from its host
    /// interface.
    pub macs: [u32; 3],
}

impl Vouch {
    /// No word (what a loader's global starts as).
    pub const NONE: Vouch = Vouch {
        cookie: 0,
        slot: 0,
        host_ifindex: 0,
        macs: [0; 3],
    };
}

/// Its size: XDP metadata is whole words, at most 32 bytes.
pub const VOUCH_LEN: usize = core::mem::size_of::<Vouch>();
const _: () = assert!(VOUCH_LEN.is_multiple_of(4) && VOUCH_LEN <= 32);
