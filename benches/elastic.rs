//! Membership at scale, in the simulator's scripted cluster ([`dkv::sim::Cluster`]: the shard
//! cores `kvd` runs, over simulated disks and network, in virtual time), for clusters of 4, 8,
//! 16 and 32 nodes (N = 3, one shard each, kvd's gossip defaults):
//!
//! * **Failure detection**: gossip intervals from a node's crash until every other node has
//!   marked it failed.
//! * **One leave**: the records (and bytes) the partition copies move (STATS
//!   `transfer_keys`, `transfer_bytes`, summed) when the last node decommissions, against the
//!   minimum (the records it held: each must reach one new owner), and the simulated time
//!   the change takes.
//! * **One join** (from the planner the leader runs, `Ownership::plan_join`): placements the
//!   (k+1)-th node takes, against its fair share P·N/(k+1).
//!
//! Run: `cargo bench --bench elastic` (optionally `-- KEYS`, default 3000).

use dkv::cluster::Ownership;
use dkv::limits::{GOSSIP_INTERVAL_MS_DEFAULT, PARTITION_COUNT};
use dkv::protocol::{Consistency, Request};
use dkv::sim::{Cluster, ClusterSpec};

/// Longest a phase may take, in simulated ms.
const PHASE_MS_MAX: u64 = 600_000;

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_000);
    println!(
        "nodes  failure_rounds  leave_records  leaver_held  ratio  leave_bytes  leave_ms  \
         join_placements  fair_share"
    );
    for k in [4u32, 8, 16, 32] {
        // Failure detection.
        let mut cl = Cluster::start(ClusterSpec::new(k, 3));
        cl.crash(k);
        let start = cl.now_ms();
        let detected = cl.run_until(PHASE_MS_MAX, |c| {
            (1..k).all(|id| c.stat(id, "failures_detected") >= 1)
        });
        assert!(
            detected.is_some(),
            "{k} nodes: the failure was not detected"
        );
        let rounds = (cl.now_ms() - start) as f64 / GOSSIP_INTERVAL_MS_DEFAULT as f64;

        // One leave, with `keys` keys of 100 bytes.
        let mut cl = Cluster::start(ClusterSpec::new(k, 3));
        let value = [b'v'; 100];
        for i in 0..keys {
            let key = format!("elastic-bench-{i}");
            cl.put(1 + (i as u32 % k), key.as_bytes(), &value, Consistency::All);
        }
        let held = cl.stat(k, "storage_keys");
        let command = format!("LEAVE {k}");
        let reply = cl
            .request(1, &Request::ClusterAdmin { command: &command })
            .expect("an answer");
        assert!(reply.text().contains("leave"), "{}", reply.text());
        let start = cl.now_ms();
        let done = cl.run_until(PHASE_MS_MAX, |c| {
            (1..k).all(|id| c.stat(id, "ring_change_running_max") == 0)
                && c.stat(1, "ring_version_max") > 2
        });
        if done.is_none() {
            let plan = cl
                .request(1, &Request::ClusterAdmin { command: "PLAN" })
                .map(|r| r.text())
                .unwrap_or_default();
            panic!("{k} nodes: the leave did not finish: {plan}");
        }
        let (moved, bytes) = (cl.stat_sum("transfer_keys"), cl.stat_sum("transfer_bytes"));

        // One join, from the planner.
        let ids: Vec<u32> = (1..=k).collect();
        let o = Ownership::initial(&ids, 3).expect("a ring");
        let j = o.plan_join(k + 1).expect("a join");
        let taken = Ownership::moves(&o, &j).len();
        let fair = (PARTITION_COUNT * 3) as f64 / (k + 1) as f64;
        println!(
            "{k:>5}  {rounds:>14.1}  {moved:>13}  {held:>11}  {:>5.2}  {bytes:>11}  {:>8}  \
             {taken:>15}  {fair:>10.1}",
            moved as f64 / held.max(1) as f64,
            cl.now_ms() - start
        );
    }
}
