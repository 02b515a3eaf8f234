//! How a core takes part in its node's membership (see [`crate::cluster::view`]): the whole
//! membership of a single-shard node, the membership shard that hands its view to the other
//! shards, or a follower that decides with the views it is given and passes its anti-entropy
//! reports to the membership shard.

use super::{ClusterNode, Role};
use crate::cluster::antientropy;
use crate::cluster::membership::MemberEvent;
use crate::cluster::view::{NodeView, MEMBERSHIP_SHARD, VIEW_REFRESH_MS};
use crate::storage::Store;

impl<C> ClusterNode<C> {
    /// With several shards per node: this core owns only shard `shard`'s partitions (call
    /// before [`ClusterNode::recover_clock`]). Anti-entropy frames (0x23..=0x26) begin with a
    /// u16 partition: route them to `hash::shard_of_partition(partition, shards)`.
    ///
    /// With more than one shard, shard [`MEMBERSHIP_SHARD`] runs the node's membership and
    /// hands out its view ([`ClusterNode::poll_view`]); every other shard becomes a follower
    /// that never gossips and decides with the views it is given ([`ClusterNode::on_view`]).
    pub fn set_shard(&mut self, shard: usize, shards: usize) {
        self.aae.set_shard(shard, shards);
        self.shards = shards;
        self.role = if shards <= 1 {
            Role::Whole
        } else if shard == MEMBERSHIP_SHARD {
            Role::Publisher {
                last: None,
                last_sent_ms: 0,
                events: Vec::new(),
                horizons_sent: vec![0; crate::limits::PARTITION_COUNT],
            }
        } else {
            Role::Follower { view: None }
        };
    }

    /// Whether this core follows another's membership view (a shard other than the
    /// membership shard of a node with several).
    pub fn is_follower(&self) -> bool {
        matches!(self.role, Role::Follower { .. })
    }

    /// The view a follower decides with; `None` for other cores and before the first view.
    pub(super) fn followed(&self) -> Option<&NodeView> {
        match &self.role {
            Role::Follower { view } => view.as_ref(),
            _ => None,
        }
    }

    /// The membership shard's view to hand to the node's other shards, when it changed since
    /// the last one (or [`VIEW_REFRESH_MS`] passed); `None` otherwise and on other cores. Call
    /// after the inputs of a turn (a cluster tick is enough: it runs every few ms).
    pub fn poll_view(&mut self, now_ms: u64) -> Option<NodeView> {
        if !matches!(self.role, Role::Publisher { .. }) {
            return None;
        }
        // What decides; the CLUSTER text and the clock figures of STATS (costly to render)
        // only ride along when a view goes out.
        let state = NodeView {
            alive: self.membership.alive_ids(),
            members: (self.membership.members().iter())
                .map(|m| (m.id, m.addr))
                .collect(),
            // The node's leader (ring-aware: a node that left no longer leads), not the
            // membership's lowest alive id, or the followers would lead with another.
            leader: self.leader(),
            incarnation: self.membership.incarnation(),
            clock: Some(self.membership.cluster_clock(now_ms)),
            ring_version: self.ring.version(),
            ring_lease_until: self.ring_lease_until(),
            ..NodeView::default()
        };
        let current = self.aae.horizons();
        let Role::Publisher {
            last,
            last_sent_ms,
            events,
            horizons_sent,
        } = &self.role
        else {
            unreachable!("checked above");
        };
        let refresh = last.is_none() || now_ms >= last_sent_ms.saturating_add(VIEW_REFRESH_MS);
        let changed = (0..current.len()).any(|p| current[p] != horizons_sent[p]);
        let same = last.as_ref().is_some_and(|l| l.same_state(&state));
        if same && !refresh && !changed && events.is_empty() {
            return None;
        }
        let mut view = state.clone();
        view.figures = self.clock_figures(now_ms);
        view.text = self.cluster_text();
        let Role::Publisher {
            last,
            last_sent_ms,
            events,
            horizons_sent,
        } = &mut self.role
        else {
            unreachable!("checked above");
        };
        let ring_changed = last
            .as_ref()
            .is_none_or(|l| l.ring_version != view.ring_version);
        if refresh || ring_changed {
            view.ring = Some(self.ring.state().clone());
        }
        view.events = std::mem::take(events);
        for (p, &h) in current.iter().enumerate() {
            // On a refresh every known horizon goes out again; otherwise only the changes.
            if h != 0 && (refresh || h != horizons_sent[p]) {
                view.horizons.push((p as u16, h));
            }
        }
        horizons_sent.copy_from_slice(current);
        *last = Some(state);
        *last_sent_ms = now_ms;
        Some(view)
    }

    /// A view from the node's membership shard (on a follower; ignored on other cores): decide
    /// with it from now on, act on its member events and adopt its horizons.
    pub fn on_view(&mut self, now_ms: u64, store: &mut dyn Store, view: NodeView) {
        if !self.is_follower() {
            return;
        }
        let mut view = view;
        if let Some(ring) = view.ring.take() {
            self.adopt_ring(store, ring);
        }
        let Role::Follower { view: held } = &mut self.role else {
            return;
        };
        let events = std::mem::take(&mut view.events);
        let horizons = std::mem::take(&mut view.horizons);
        *held = Some(view);
        self.update_clock_offset(now_ms);
        let mut recovered = false;
        for e in &events {
            self.aae.on_member_event(now_ms, e);
            recovered |= matches!(
                e,
                MemberEvent::Recovered { .. } | MemberEvent::Restarted { .. }
            );
        }
        if !horizons.is_empty() {
            self.aae.adopt_horizon_list(store, &horizons);
        }
        if recovered {
            // Deliver at once rather than at the next tick, as the membership shard does.
            self.deliver_hints(now_ms);
        }
        self.release_held(now_ms, store);
    }

    /// Completed anti-entropy exchanges a follower hands to the membership shard (empty on
    /// other cores: they report to the leader themselves).
    pub fn take_reports(&mut self) -> antientropy::Reports {
        if self.is_follower() {
            self.aae.take_reports()
        } else {
            antientropy::Reports::new()
        }
    }

    /// Completed exchanges of the node's other shards, to report to the leader with this
    /// core's own (on the membership shard).
    pub fn on_reports(&mut self, reports: antientropy::Reports) {
        self.aae.add_reports(reports);
    }

    /// This node's incarnation (as the membership shard knows it, on a follower).
    pub fn incarnation(&self) -> u64 {
        match &self.role {
            Role::Follower { view } => view.as_ref().map_or(0, |v| v.incarnation),
            _ => self.membership.incarnation(),
        }
    }
}
