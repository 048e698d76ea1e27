//! The counters behind `/metrics`, counted as things happen rather than from the history.
//!
//! What a task's end adds (tasks by worker, state and cause; its duration, queue wait and memory
//! peak, into histograms by worker), what an attempt's reported usage adds (tokens, cost) and what
//! scheduling a retry adds (retries by worker and cause) is worked out here, as a list of
//! [`Bump`]s, from the figures the store is writing; each backend adds them to its `counters`
//! table in the transaction that records the change (`finish`, `cancel`, a recovery that finds a
//! task dead). So a scrape reads a few hundred rows however long the history is, and removing
//! history (retention, `agentq clean`) takes nothing from them: a counter only grows.
//!
//! A row is one series: its name and its labels, `key=value` pairs joined by `,` in a fixed
//! order. The values are words (worker names, states, causes, bounds), which hold neither `,`
//! nor `=`. A histogram is one row per bucket, counting the observations above the bound before
//! it and at most its own (`le`; `+Inf` for the rest), cumulated when read, and a `_sum` row;
//! its count is the buckets' total. The migration that made the table (SQLite's
//! `0010_counters.sql`, PostgreSQL's `0005_counters.sql`) seeded it from the history there was,
//! with these names and bounds: a change to either must be a migration too.

use std::collections::BTreeMap;

use super::{Finish, Histogram};
use agentq_core::domain::{Cause, TaskState};

/// Upper bounds of the histogram of ended tasks' durations (their last attempt's), ms.
pub const DURATION_BOUNDS_MS: &[f64] = &[
    100.0,
    500.0,
    1_000.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Upper bounds of the histogram of ended tasks' queue waits (queued to first started), ms: a
/// queue of long tasks keeps the last waiting for hours.
pub const QUEUE_WAIT_BOUNDS_MS: &[f64] = &[
    100.0,
    1_000.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
    14_400_000.0,
    43_200_000.0,
    86_400_000.0,
];

/// Upper bounds of the histogram of ended tasks' memory peaks (their last attempt's), MiB.
pub const MEMORY_BOUNDS_MIB: &[f64] = &[16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

/// The cause a task that succeeded ends with.
pub const NO_CAUSE: &str = "none";
/// The cause of a task cancelled (queued or running).
pub const CANCELLED: &str = "cancelled";
/// The cause of a task found dead by recovery: its daemon died under it too often.
pub const INTERRUPTED: &str = "interrupted";

const FINISHED: &str = "finished";
const RETRIES: &str = "retries";
const TOKENS: &str = "tokens";
const COST: &str = "cost_usd";
const DURATION: &str = "duration_ms";
const QUEUE_WAIT: &str = "queue_wait_ms";
const MEMORY: &str = "memory_peak_mb";

/// An addition to one counter row.
#[derive(Clone, Debug, PartialEq)]
pub struct Bump {
    pub name: String,
    pub labels: String,
    pub by: f64,
}

fn bump(name: &str, labels: &[(&str, &str)], by: f64) -> Bump {
    Bump {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        by,
    }
}

/// The bucket and sum rows one observation of `value` (if any) in histogram `name` adds.
fn observe(bumps: &mut Vec<Bump>, name: &str, bounds: &[f64], worker: &str, value: Option<f64>) {
    let Some(value) = value else { return };
    let le = bounds
        .iter()
        .find(|b| value <= **b)
        .map_or("+Inf".to_string(), f64::to_string);
    bumps.push(bump(
        &format!("{name}_bucket"),
        &[("worker", worker), ("le", &le)],
        1.0,
    ));
    bumps.push(bump(&format!("{name}_sum"), &[("worker", worker)], value));
}

/// What the result `f` of an attempt of a task of `worker` adds: its usage, if its agent reported
/// any; then a retry (by its cause) when it goes back to the queue, or else the task's end, with
/// its duration, memory peak and `waited_ms`, how long after it was queued its first attempt
/// started.
pub fn finished(f: &Finish, worker: &str, waited_ms: Option<i64>) -> Vec<Bump> {
    let mut bumps = Vec::new();
    if let Some((cost_usd, input, output)) = super::common::usage_row(f) {
        for (kind, n) in [("input", input), ("output", output)] {
            bumps.push(bump(
                TOKENS,
                &[("worker", worker), ("kind", kind)],
                n as f64,
            ));
        }
        bumps.push(bump(COST, &[("worker", worker)], cost_usd));
    }
    let cause = f.cause.as_deref().unwrap_or(NO_CAUSE);
    if f.state == TaskState::Queued {
        bumps.push(bump(RETRIES, &[("worker", worker), ("cause", cause)], 1.0));
    } else {
        bumps.extend(ended(worker, f.state, cause));
        let duration = Some(f.duration_ms as f64);
        observe(&mut bumps, DURATION, DURATION_BOUNDS_MS, worker, duration);
        let waited = waited_ms.map(|w| w.max(0) as f64);
        observe(&mut bumps, QUEUE_WAIT, QUEUE_WAIT_BOUNDS_MS, worker, waited);
        observe(
            &mut bumps,
            MEMORY,
            MEMORY_BOUNDS_MIB,
            worker,
            f.memory_peak_mb,
        );
    }
    settle(bumps)
}

/// What a task of `worker` ending in `state` for `cause` adds, without figures: a cancel, or a
/// recovery that finds it dead.
pub fn ended(worker: &str, state: TaskState, cause: &str) -> Vec<Bump> {
    vec![bump(
        FINISHED,
        &[
            ("worker", worker),
            ("state", state.as_str()),
            ("cause", cause),
        ],
        1.0,
    )]
}

/// Each row once, added up, in the order of its key (name, then labels, by bytes): the order in
/// which a backend whose writers can wait for each other (PostgreSQL) locks them, so that two
/// transactions adding to the same rows never wait for each other in a cycle.
pub fn settle(mut bumps: Vec<Bump>) -> Vec<Bump> {
    bumps.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    bumps.dedup_by(|later, kept| {
        let same = later.name == kept.name && later.labels == kept.labels;
        if same {
            kept.by += later.by;
        }
        same
    });
    bumps
}

/// The (state, cause) pairs a task can end with: succeeded, cancelled, failed for any cause
/// (an agent may say a failure is final), dead for a cause worth retrying or for its daemon's
/// deaths.
pub fn endings() -> Vec<(TaskState, &'static str)> {
    let mut out = vec![
        (TaskState::Succeeded, NO_CAUSE),
        (TaskState::Cancelled, CANCELLED),
    ];
    out.extend(Cause::ALL.iter().map(|c| (TaskState::Failed, c.as_str())));
    out.extend(
        Cause::ALL
            .iter()
            .filter(|c| c.retryable())
            .map(|c| (TaskState::Dead, c.as_str())),
    );
    out.push((TaskState::Dead, INTERRUPTED));
    out
}

/// The counters, as read back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Tasks that ended, by (worker, state, cause).
    pub finished: BTreeMap<(String, String, String), u64>,
    /// Retries scheduled after a failed attempt, by (worker, cause).
    pub retries: BTreeMap<(String, String), u64>,
    /// Tokens attempts reported, by (worker, `input` or `output`).
    pub tokens: BTreeMap<(String, String), u64>,
    /// What attempts cost, US dollars, by worker.
    pub cost_usd: BTreeMap<String, f64>,
    /// Ended tasks' last attempts' durations (ms), by worker.
    pub duration_ms: BTreeMap<String, Histogram>,
    /// Ended tasks' waits from queued to their first start (ms), by worker.
    pub queue_wait_ms: BTreeMap<String, Histogram>,
    /// Ended tasks' last attempts' memory peaks (MiB), by worker.
    pub memory_peak_mb: BTreeMap<String, Histogram>,
}

fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
        .unwrap_or("")
}

fn empty(bounds: &[f64]) -> Histogram {
    Histogram {
        bounds: bounds.to_vec(),
        counts: vec![0; bounds.len()],
        count: 0,
        sum: 0.0,
    }
}

impl Counters {
    /// The counters the rows `(name, labels, value)` of a `counters` table hold.
    pub fn read(rows: impl IntoIterator<Item = (String, String, f64)>) -> Counters {
        let mut c = Counters::default();
        for (name, labels, value) in rows {
            let of = |key: &str| label(&labels, key).to_string();
            let n = value.round().max(0.0) as u64;
            match name.as_str() {
                FINISHED => {
                    *c.finished
                        .entry((of("worker"), of("state"), of("cause")))
                        .or_default() += n
                }
                RETRIES => *c.retries.entry((of("worker"), of("cause"))).or_default() += n,
                TOKENS => *c.tokens.entry((of("worker"), of("kind"))).or_default() += n,
                COST => *c.cost_usd.entry(of("worker")).or_default() += value,
                other => {
                    let Some((histogram, part)) = other.rsplit_once('_') else {
                        continue;
                    };
                    let (map, bounds) = match histogram {
                        DURATION => (&mut c.duration_ms, DURATION_BOUNDS_MS),
                        QUEUE_WAIT => (&mut c.queue_wait_ms, QUEUE_WAIT_BOUNDS_MS),
                        MEMORY => (&mut c.memory_peak_mb, MEMORY_BOUNDS_MIB),
                        _ => continue,
                    };
                    let h = map.entry(of("worker")).or_insert_with(|| empty(bounds));
                    match part {
                        "sum" => h.sum += value,
                        "bucket" => {
                            // An observation in this bucket is at or under every bound from its own.
                            let le = label(&labels, "le").parse::<f64>().unwrap_or(f64::INFINITY);
                            for (bound, count) in h.bounds.iter().zip(h.counts.iter_mut()) {
                                if le <= *bound {
                                    *count += n;
                                }
                            }
                            h.count += n;
                        }
                        _ => {}
                    }
                }
            }
        }
        c
    }

    /// With a zero for every series `workers` could have that none counted yet: Prometheus's
    /// `rate()` needs a series to exist before its first increase.
    pub fn with_known<'a>(mut self, workers: impl IntoIterator<Item = &'a str>) -> Counters {
        let endings = endings();
        for w in workers {
            for (state, cause) in &endings {
                let key = (w.to_string(), state.as_str().to_string(), cause.to_string());
                self.finished.entry(key).or_default();
            }
            for cause in Cause::ALL.iter().filter(|c| c.retryable()) {
                let key = (w.to_string(), cause.as_str().to_string());
                self.retries.entry(key).or_default();
            }
            for kind in ["input", "output"] {
                self.tokens
                    .entry((w.to_string(), kind.to_string()))
                    .or_default();
            }
            self.cost_usd.entry(w.to_string()).or_default();
            for (map, bounds) in [
                (&mut self.duration_ms, DURATION_BOUNDS_MS),
                (&mut self.queue_wait_ms, QUEUE_WAIT_BOUNDS_MS),
                (&mut self.memory_peak_mb, MEMORY_BOUNDS_MIB),
            ] {
                map.entry(w.to_string()).or_insert_with(|| empty(bounds));
            }
        }
        self
    }

    /// The tokens `worker`'s attempts reported, of `kind` (`input`, `output`).
    pub fn tokens_of(&self, worker: &str, kind: &str) -> u64 {
        self.tokens
            .get(&(worker.to_string(), kind.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// What `worker`'s attempts cost.
    pub fn cost_of(&self, worker: &str) -> f64 {
        self.cost_usd.get(worker).copied().unwrap_or(0.0)
    }

    /// Tasks that ended in `state`, of every worker and cause.
    pub fn finished_in(&self, state: TaskState) -> u64 {
        self.finished
            .iter()
            .filter(|((_, s, _), _)| s == state.as_str())
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(state: TaskState, cause: Option<&str>, ms: i64) -> Finish {
        Finish {
            state,
            not_before: None,
            exit_code: None,
            output: None,
            error: None,
            stderr_tail: None,
            duration_ms: ms,
            usage: Default::default(),
            cause: cause.map(str::to_string),
            memory_peak_mb: None,
            now: 0,
        }
    }

    /// The rows `bumps` leave in an empty table.
    fn rows(bumps: &[Bump]) -> Vec<(String, String, f64)> {
        settle(bumps.to_vec())
            .into_iter()
            .map(|b| (b.name, b.labels, b.by))
            .collect()
    }

    #[test]
    fn an_end_counts_the_task_and_observes_each_figure_in_one_bucket() {
        let f = Finish {
            memory_peak_mb: Some(20.0),
            ..result(TaskState::Succeeded, None, 700)
        };
        let bumps = finished(&f, "w", Some(50));
        let names: Vec<(&str, &str)> = bumps
            .iter()
            .map(|b| (b.name.as_str(), b.labels.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("duration_ms_bucket", "worker=w,le=1000"),
                ("duration_ms_sum", "worker=w"),
                ("finished", "worker=w,state=succeeded,cause=none"),
                ("memory_peak_mb_bucket", "worker=w,le=64"),
                ("memory_peak_mb_sum", "worker=w"),
                ("queue_wait_ms_bucket", "worker=w,le=100"),
                ("queue_wait_ms_sum", "worker=w"),
            ]
        );
        let c = Counters::read(rows(&bumps));
        let d = &c.duration_ms["w"];
        assert_eq!(
            (d.counts[..4].to_vec(), d.count, d.sum),
            (vec![0, 0, 1, 1], 1, 700.0)
        );
        assert_eq!(c.memory_peak_mb["w"].counts[..2], [0, 1]);
        assert_eq!(c.finished_in(TaskState::Succeeded), 1);
    }

    #[test]
    fn a_retry_counts_its_cause_and_usage_and_no_end() {
        let mut f = result(TaskState::Queued, Some("timeout"), 90_000_000);
        f.usage.input_tokens = Some(10);
        f.usage.output_tokens = Some(3);
        f.usage.cost_usd = Some(0.5);
        let c = Counters::read(rows(&finished(&f, "w", Some(5))));
        assert_eq!(c.retries[&("w".into(), "timeout".into())], 1);
        assert_eq!(
            (c.tokens_of("w", "input"), c.tokens_of("w", "output")),
            (10, 3)
        );
        assert_eq!(c.cost_of("w"), 0.5);
        assert!(c.finished.is_empty() && c.duration_ms.is_empty());
    }

    #[test]
    fn an_observation_past_every_bound_counts_only_under_inf() {
        let c = Counters::read(rows(&finished(
            &result(TaskState::Dead, Some("timeout"), 90_000_000),
            "w",
            None,
        )));
        let d = &c.duration_ms["w"];
        assert_eq!((d.counts.iter().sum::<u64>(), d.count), (0, 1));
        assert!(c.queue_wait_ms.is_empty(), "no wait known, none observed");
    }

    #[test]
    fn rows_of_one_key_are_added_up_in_key_order() {
        let mut bumps = ended("w", TaskState::Cancelled, CANCELLED);
        bumps.extend(ended("v", TaskState::Dead, INTERRUPTED));
        bumps.extend(ended("w", TaskState::Cancelled, CANCELLED));
        let settled = settle(bumps);
        assert_eq!(settled.len(), 2);
        assert_eq!(settled[0].labels, "worker=v,state=dead,cause=interrupted");
        assert_eq!(settled[1].by, 2.0);
    }

    #[test]
    fn known_workers_get_a_zero_for_every_series() {
        let c = Counters::default().with_known(["w", "pool"]);
        assert_eq!(c.finished.len(), 2 * endings().len());
        assert_eq!(
            c.finished[&("pool".into(), "dead".into(), "interrupted".into())],
            0
        );
        assert_eq!(c.retries.len(), 2 * 7);
        assert_eq!(c.duration_ms["w"].counts, vec![0; DURATION_BOUNDS_MS.len()]);
        // What was counted stays.
        let counted = Counters::read(rows(&ended("w", TaskState::Cancelled, CANCELLED)));
        let c = counted.with_known(["w"]);
        assert_eq!(
            c.finished[&("w".into(), "cancelled".into(), "cancelled".into())],
            1
        );
    }
}
