//! How much memory an agent holds: the resident set of every process in its tree (process group,
//! or Job Object), summed, sampled while it runs.
//!
//! The members and their sizes come from `agentq_platform::process::Tree` (`/proc` on Linux, the
//! job's processes' working sets on Windows); a process that exits while being read is skipped,
//! so a sample is a sample, not a transaction. Where there is no figure, `max_memory` is not
//! enforced. Where the attempt has a cgroup with the memory controller (`cgroup.rs` in
//! agentq-platform), the figure is the kernel's own for it, `memory.current`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use agentq_platform::process::Tree;

/// A memory figure for the event log: the group now, and its peak so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub rss: u64,
    pub peak: u64,
}

pub type Reporter = Arc<dyn Fn(Report) + Send + Sync>;

/// How an agent's memory is watched.
#[derive(Clone)]
pub struct Policy {
    /// Stop the agent when its group holds more than this.
    pub max: Option<u64>,
    pub sample_every: Duration,
    pub report_every: Duration,
    /// Told of the figure every `report_every`.
    pub report: Option<Reporter>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("max", &self.max)
            .field("sample_every", &self.sample_every)
            .field("report_every", &self.report_every)
            .finish_non_exhaustive()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max: None,
            sample_every: Duration::from_secs(1),
            report_every: Duration::from_secs(10),
            report: None,
        }
    }
}

/// When the first scheduled sample is taken, at the latest.
const FIRST_SAMPLE: Duration = Duration::from_millis(50);

/// Samples one group on `policy`'s schedule and keeps its peak.
pub struct Watch {
    tree: Option<Tree>,
    policy: Policy,
    pub peak: Option<u64>,
    next_sample: Instant,
    next_report: Instant,
}

impl Watch {
    pub fn new(tree: Option<Tree>, policy: Policy) -> Watch {
        let now = Instant::now();
        Watch {
            tree,
            // Soon after the start, then on the schedule: the kernel's counters lag a process
            // just started, and a short task still gets a figure.
            next_sample: now + policy.sample_every.min(FIRST_SAMPLE),
            next_report: now + policy.report_every,
            policy,
            peak: None,
        }
    }

    /// Waits for the next sample time, samples, and reports when a report is due. Returns the
    /// resident bytes when they are over the limit. Pending forever where there is nothing to
    /// sample.
    pub async fn over_limit(&mut self) -> u64 {
        let Some(tree) = self.tree.clone() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep_until(self.next_sample).await;
            self.next_sample = Instant::now() + self.policy.sample_every;
            let Some(rss) = tree.rss() else {
                // Nothing to read yet (a keeper that has not started its agent, on a loaded
                // machine): soon again, until there is a first figure.
                if self.peak.is_none() {
                    self.next_sample = Instant::now() + self.policy.sample_every.min(FIRST_SAMPLE);
                }
                continue;
            };
            let peak = self.peak.map_or(rss, |p| p.max(rss));
            self.peak = Some(peak);
            if Instant::now() >= self.next_report {
                self.next_report = Instant::now() + self.policy.report_every;
                if let Some(report) = &self.policy.report {
                    report(Report { rss, peak });
                }
            }
            if self.policy.max.is_some_and(|max| rss > max) {
                return rss;
            }
        }
    }

    /// The group's first sample, of its leader alone (just started, it is the whole group): one
    /// read, so even a task too short for a scheduled sample has a figure.
    pub fn sample_leader(&mut self) {
        // A leader already gone (a zombie, holding nothing) gives no figure.
        if let Some(rss) = self.tree.as_ref().and_then(Tree::leader_rss) {
            self.peak = Some(self.peak.map_or(rss, |old| old.max(rss)));
        }
    }

    /// One more sample, outside the schedule (at the end, so a short run has a figure too).
    pub fn sample_now(&mut self) {
        if let Some(rss) = self.tree.as_ref().and_then(Tree::rss) {
            self.peak = Some(self.peak.map_or(rss, |p| p.max(rss)));
        }
    }

    /// The peak in MiB, to one decimal.
    pub fn peak_mb(&self) -> Option<f64> {
        self.peak.map(mb)
    }
}

/// Bytes for people: MiB to one decimal, or KiB below a MiB.
pub fn human(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes.div_ceil(1024))
    } else {
        format!("{} MiB", mb(bytes))
    }
}

/// Bytes as MiB, to one decimal.
pub fn mb(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mib_to_one_decimal() {
        assert_eq!(mb(3 << 20), 3.0);
        assert_eq!(mb((1 << 20) + (1 << 19)), 1.5);
    }
}
