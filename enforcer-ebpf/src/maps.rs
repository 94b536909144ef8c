//! The kernel's maps. BTF maps throughout so that `bpftool map dump` names every field.
use aya_ebpf::{
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
    },
    macros::btf_map,
};
use enforcer_common::*;

#[btf_map]
pub static NODE_CONFIG: Array<NodeConfig, 1> = Array::new();

#[btf_map]
pub static POD_BY_VLAN: HashMap<u32, PodInfo, { MAX_PODS as usize }> = HashMap::new();

#[btf_map]
pub static POD_BY_IFINDEX: HashMap<u32, PodInfo, { MAX_PODS as usize }> = HashMap::new();

/// A pod on this node by its address -> its host interface (the key of
/// `POD_BY_IFINDEX`): traffic between two pods of the node is delivered directly.
#[btf_map]
pub static POD_BY_IPV4: HashMap<[u8; 4], u32, { MAX_PODS as usize }> = HashMap::new();

#[btf_map]
pub static POD_BY_IPV6: HashMap<[u8; 16], u32, { MAX_PODS as usize }> = HashMap::new();

/// Stage A of the policy lookup: (policy scope, remote prefix) -> rule class.
#[btf_map]
pub static PEER_V4: LpmTrie<PeerKeyV4, PeerClass, { MAX_PEER_ENTRIES as usize }> = LpmTrie::new();

#[btf_map]
pub static PEER_V6: LpmTrie<PeerKeyV6, PeerClass, { MAX_PEER_ENTRIES as usize }> = LpmTrie::new();

/// Stage A hashed: (policy scope, prefix length, masked remote address) -> rule
/// class, tried for each length `PEER_LENS` lists. Allocated per entry, as the tries.
#[btf_map]
pub static PEER_HASH_V4: HashMap<
    PeerHashKeyV4,
    PeerClass,
    { MAX_PEER_ENTRIES as usize },
    NO_PREALLOC,
> = HashMap::new();

#[btf_map]
pub static PEER_HASH_V6: HashMap<
    PeerHashKeyV6,
    PeerClass,
    { MAX_PEER_ENTRIES as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Per family (`PEER_LENS_V4`, `PEER_LENS_V6`): the hash's prefix lengths, or the trie.
#[btf_map]
pub static PEER_LENS: Array<PeerLens, 2> = Array::new();

/// Stage B: (class, protocol, port prefix) -> the rule that allows it. Single ports
/// are in `PORT_EXACT`; the trie holds ranges, "all ports" and ICMP types.
#[btf_map]
pub static PORT_RULES: LpmTrie<PortKey, PortRule, { MAX_PORT_ENTRIES as usize }> = LpmTrie::new();

/// Stage B for a single port (the longest prefix there is, so a hit ends the search).
#[btf_map]
pub static PORT_EXACT: HashMap<PortKey, PortRule, { MAX_PORT_ENTRIES as usize }, NO_PREALLOC> =
    HashMap::new();

/// `BPF_F_NO_PREALLOC`: the rule hashes take memory per entry, like the tries.
const NO_PREALLOC: usize = 1;

/// Destinations security groups cannot filter (SPEC §6).
#[btf_map]
pub static ALWAYS_V4: LpmTrie<[u8; 4], AlwaysAllow, { MAX_ALWAYS_ENTRIES as usize }> =
    LpmTrie::new();

#[btf_map]
pub static ALWAYS_V6: LpmTrie<[u8; 16], AlwaysAllow, { MAX_ALWAYS_ENTRIES as usize }> =
    LpmTrie::new();

/// Flow table. A plain hash, not an LRU: SPEC §4 says that when the table is full new
/// flows are refused and existing ones keep working, which LRU eviction would break. The
/// daemon sweeps idle entries; the programs also drop an idle entry they hit.
#[btf_map]
pub static FLOWS: HashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = HashMap::new();

/// Live flow entries per pod slot, kept by the programs (atomic add on insert,
/// subtract when a program removes an entry).
#[btf_map]
pub static FLOW_COUNT: Array<u64, { MAX_PODS as usize }> = Array::new();

/// Entries per pod slot removed by the daemon's sweep. Only the daemon writes it (a map
/// update from user space would lose the programs' concurrent increments), so a pod's
/// live count is `FLOW_COUNT - FLOW_SWEPT`.
#[btf_map]
pub static FLOW_SWEPT: Array<u64, { MAX_PODS as usize }> = Array::new();

/// First-fragment verdicts for later fragments. An LRU: fragments are short-lived and an
/// evicted entry only costs the rest of one datagram.
#[btf_map]
pub static FRAGS: LruHashMap<FragKey, FragValue, { MAX_FRAGS as usize }> = LruHashMap::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<Counter, { COUNTER_ENTRIES as usize }> = PerCpuArray::new();

/// Tail calls (`enforcer_common::tail`), set by the loader.
#[btf_map]
pub static TAIL_CALLS: ProgramArray<{ tail::SLOTS as usize }> = ProgramArray::new();

/// Per-CPU scratch for the parsed packet (keeps it off the 512-byte stack).
#[btf_map]
pub static SCRATCH: PerCpuArray<enforcer_ebpf::parse::Packet, 1> = PerCpuArray::new();

/// Where a destination is (SPEC §5): the node's own addresses, the VPC and the SNAT
/// exclusions. Longest prefix wins; no entry means off-VPC.
#[btf_map]
pub static DEST_V4: LpmTrie<[u8; 4], DestClass, { MAX_DEST_ENTRIES as usize }> = LpmTrie::new();

#[btf_map]
pub static DEST_V6: LpmTrie<[u8; 16], DestClass, { MAX_DEST_ENTRIES as usize }> = LpmTrie::new();

/// Source NAT, the way back: (protocol, NAT port, remote end) -> the pod's end. Written
/// with the flow it belongs to, removed with it (by the programs or the daemon's sweep).
#[btf_map]
pub static SNAT_REV: HashMap<SnatKey, SnatValue, { MAX_SNAT as usize }> = HashMap::new();

/// Flow events for the daemon (`events`). Process-local, like the two below: not
/// pinned, so each daemon reads its own programs' events.
#[btf_map]
pub static EVENTS: RingBuf<FlowEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

/// Each pod's event budget, per CPU.
#[btf_map]
pub static EVENT_BUCKETS: PerCpuArray<EventBucket, { MAX_PODS as usize }> = PerCpuArray::new();

/// Events not sent (over budget or the buffer full), per pod and CPU.
#[btf_map]
pub static EVENTS_LOST: PerCpuArray<u64, { MAX_PODS as usize }> = PerCpuArray::new();

/// Flows each rule admitted (by cookie), per CPU: `enforcer status --rules`. Counted
/// since the daemon started (not pinned).
#[btf_map]
pub static RULE_HITS: PerCpuHashMap<u32, u64, { MAX_RULE_HITS as usize }> = PerCpuHashMap::new();

/// Audit mode: packets the rules deny that passed, per pod and CPU (not pinned).
#[btf_map]
pub static WOULD_DROP: PerCpuArray<u64, { MAX_PODS as usize }> = PerCpuArray::new();

/// Bumped by the daemon after each change to the pod maps or the flow table: every
/// CPU's cached copies (`cache`) stop serving. Process-local: each daemon bumps its
/// own programs'.
#[btf_map]
pub static CACHE_EPOCH: Array<u64, 1> = Array::new();

/// Every CPU's copies of pods by host interface or VLAN, CPU after CPU
/// (`enforcer_common::cache`; the loader sizes it).
#[btf_map]
pub static POD_CACHE: Array<
    crate::cache::PodCacheEntry,
    { enforcer_common::cache::POD_ENTRIES as usize },
> = Array::new();

/// Every CPU's copies of established flows, CPU after CPU (`enforcer_common::cache`;
/// the loader sizes it).
#[btf_map]
pub static FLOW_CACHE: Array<
    crate::cache::FlowCacheEntry,
    { enforcer_common::cache::FLOW_ENTRIES as usize },
> = Array::new();
