//! The store test suite: one set of assertions that every backend must pass, so SQLite and
//! PostgreSQL cannot drift apart.
//!
//! Each test is an `async fn` taking a [`Fixture`] (a fresh, empty store with an event log);
//! [`store_suite!`] turns every one of them into a `#[tokio::test]` in a backend's test module,
//! given that backend's function that opens a fixture (`None`: the backend is unavailable here
//! and was explicitly allowed to be skipped). Tests of one backend's internals (its migrations,
//! its files) stay in that backend's module.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::counters::Counters;
use super::{
    Activity, EndHook, Event, EventFilter, Finish, Millis, NewEvent, NewTask, Store, Submitted,
    Task, TaskFilter, Usage,
};
use agentq_core::domain::TaskState;
use agentq_core::error::Error;
use agentq_core::worktree::{CommitMode, FileChange, Keep, Stage, Worktree};

pub const LEASE: Duration = Duration::from_secs(30);

/// A lease that runs out at once.
pub const LAPSING: Duration = Duration::from_millis(1);

/// Recovers the leases expired by `now`, waiting up to 10 s for at least `want` of them.
///
/// Times are the tests' own (small numbers), and SQLite compares leases with them; a shared
/// store compares them with its server's clock, which no test can move, and the caller's `now`
/// only dates the changes. So a test that wants a lease to lapse gives it [`LAPSING`] (or a
/// heartbeat of it), and lets real time pass.
pub async fn recover_lapsed(s: &dyn Store, now: Millis, want: usize) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut recovered = s.recover_expired(now).await.unwrap();
    while recovered.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {recovered:?} of {want} lapsed leases recovered within 10s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        recovered.extend(s.recover_expired(now).await.unwrap());
    }
    recovered
}

/// worker, pool, state, class, count
pub type CountRow = (String, bool, String, String, i64);

/// What the suite asks of a backend beyond the interface: a look at its kept counts.
#[async_trait]
pub trait Inspect: Store {
    /// The `task_counts` rows that are not zero, and what counting the tasks gives (class `''`
    /// for none), both sorted.
    async fn kept_and_counted(&self) -> (Vec<CountRow>, Vec<CountRow>);
    /// Writes `text` as task `id`'s worktree record, as it is, past the interface (a record
    /// this agentq cannot read).
    async fn write_worktree_text(&self, id: i64, text: &str);
}

/// A fresh store under test, with its event log, and whatever keeps it alive (a folder, a
/// database that is dropped afterwards).
pub struct Fixture {
    pub store: Arc<dyn Inspect>,
    pub log_path: PathBuf,
    pub keep: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn store(&self) -> &dyn Inspect {
        &*self.store
    }
}

/// Turns every test of the suite into a `#[tokio::test]` that opens its store with `$open`
/// (an `async fn() -> Option<Fixture>`).
macro_rules! store_suite {
    ($open:path) => {
        $crate::suite::store_suite!(@each $open; kept_counts_follow_every_change_of_state,
            activity_counts_restarts_and_peaks_since_a_start_by_where_tasks_ran,
            metrics_count_ended_tasks_into_buckets_and_events_by_kind,
            counters_count_each_end_by_worker_state_and_cause,
            a_scheduled_retry_counts_its_cause_and_each_attempts_usage,
            pruning_leaves_the_counters_as_they_were,
            pruning_removes_finished_tasks_only_and_metrics_never_go_down,
            highest_priority_first_then_fifo,
            a_worker_runs_one_task_at_a_time_and_workers_are_independent,
            an_empty_queue_has_no_next_due_time,
            a_shorter_pause_does_not_cut_a_longer_one,
            not_before_holds_a_task_back,
            a_stale_claim_cannot_record_a_result,
            a_task_that_keeps_killing_its_daemon_ends_dead,
            the_end_hook_sees_the_committed_view_and_only_at_the_end,
            a_failing_end_hook_undoes_the_result_and_leaves_the_claim_to_give_back,
            heartbeats_keep_a_lease,
            recover_all_but_spares_the_current_owner,
            dedup_key_makes_submit_idempotent,
            cancel_and_retry,
            submit_many_queues_every_task_in_order_and_keeps_dedup_keys,
            an_agents_nul_byte_does_not_stop_its_result_being_recorded,
            the_next_lease_expiry_is_the_earliest_lease_by_the_callers_clock,
            finish_with_retry_keeps_the_reason_and_counts,
            worker_sessions_are_kept_replaced_and_reset,
            a_paused_worker_claims_nothing_until_the_pause_ends,
            every_attempt_is_kept_with_its_cause_and_figures,
            an_errored_worker_claims_nothing_until_restarted_and_resume_does_not_clear_it,
            committed_events_reach_the_event_log_and_rolled_back_ones_do_not,
            the_pool_claims_up_to_its_limit_and_workers_never_claim_pool_tasks,
            concurrent_claims_never_run_two_tasks_of_a_worker_or_overfill_the_pool,
            concurrent_submits_with_one_dedup_key_make_one_task,
            a_task_reads_back_as_it_was_written,
            a_worker_lease_is_one_owners_until_released_or_expired,
            a_hosts_previous_run_is_recovered_and_its_leases_taken_over,
            a_daemon_whose_worker_lease_was_taken_claims_only_after_taking_it_again,
            pool_room_is_counted_per_daemon,
            a_worktree_record_reads_back_through_get_and_claim,
            set_worktree_changes_the_record_and_appends_its_event,
            worktrees_lists_only_the_tasks_with_a_record,
            a_task_its_worktree_holds_survives_pruning_until_its_change_is_settled,
            a_record_that_does_not_read_leaves_the_task_readable);
    };
    (@each $open:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(fixture) = $open().await else { return };
                $crate::suite::$name(&fixture).await;
            }
        )*
    };
}
pub(crate) use store_suite;

pub fn task(worker: &str, prompt: &str, priority: i64, now: Millis) -> NewTask {
    NewTask {
        routing: Default::default(),
        worker: worker.into(),
        prompt: prompt.into(),
        priority,
        max_attempts: 3,
        timeout_ms: None,
        not_before: now,
        source: "test".into(),
        dedup_key: None,
        worktree: None,
        now,
    }
}

pub fn done(state: TaskState, now: Millis) -> Finish {
    Finish {
        state,
        not_before: None,
        exit_code: Some(0),
        output: Some("ok".into()),
        error: None,
        stderr_tail: None,
        duration_ms: 5,
        usage: Default::default(),
        cause: None,
        memory_peak_mb: None,
        now,
    }
}

/// The kept counts are what counting the tasks gives.
async fn counts_agree(s: &dyn Inspect) {
    let (kept, counted) = s.kept_and_counted().await;
    assert_eq!(kept, counted);
}

pub async fn kept_counts_follow_every_change_of_state(f: &Fixture) {
    let s = f.store();
    let mut ids = Vec::new();
    for (i, (worker, pool, class)) in [
        ("w", false, None),
        ("w", false, Some("short")),
        ("w", true, Some("long")),
        ("pool", true, Some("long")),
        ("v", false, None),
        ("v", false, Some("short")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut new = task(worker, "t", 0, i as Millis);
        new.routing.pool = pool;
        new.routing.class = class.map(str::to_string);
        ids.push(s.submit(&new).await.unwrap().id());
    }
    counts_agree(s).await;
    let workers = ["w".to_string(), "pool".to_string()];
    let a = s.claim("w", "me", 10, LEASE).await.unwrap().unwrap();
    let b = s
        .claim_pool("me", 10, LEASE, 4, &workers)
        .await
        .unwrap()
        .unwrap();
    let c = s.claim("v", "other", 10, LEASE).await.unwrap().unwrap();
    counts_agree(s).await;
    // A retry back to the queue, a success, a release, a failure for good.
    let retry = Finish {
        not_before: Some(20),
        ..done(TaskState::Queued, 11)
    };
    assert!(s.finish(&a.fence(), &retry, None).await.unwrap());
    assert!(
        s.finish(&b.fence(), &done(TaskState::Succeeded, 11), None)
            .await
            .unwrap()
    );
    assert!(s.release(&c.fence(), "shutting down", 11).await.unwrap());
    counts_agree(s).await;
    let d = s.claim("v", "other", 12, LEASE).await.unwrap().unwrap();
    assert!(
        s.finish(&d.fence(), &done(TaskState::Dead, 13), None)
            .await
            .unwrap()
    );
    // Cancelled queued and running; retried; recovered from a dead owner and an expired lease.
    s.cancel(ids[5], 14).await.unwrap();
    let e = s.claim("w", "gone", 30, LEASE).await.unwrap().unwrap();
    s.cancel(e.task.id, 31).await.unwrap();
    counts_agree(s).await;
    s.retry(d.task.id, 32).await.unwrap();
    s.retry(ids[5], 32).await.unwrap();
    s.claim("w", "gone", 40, LEASE).await.unwrap().unwrap();
    s.claim_pool("gone", 40, LEASE, 4, &workers)
        .await
        .unwrap()
        .unwrap();
    counts_agree(s).await;
    s.recover_all_but("me", 50).await.unwrap();
    counts_agree(s).await;
    s.claim("v", "me", 60, LAPSING).await.unwrap().unwrap();
    assert_eq!(recover_lapsed(s, 62, 1).await.len(), 1);
    counts_agree(s).await;
    // What status reads from them.
    let pool = s.pool_counts().await.unwrap();
    assert_eq!((pool.long, pool.short), (2, 2));
}

pub async fn activity_counts_restarts_and_peaks_since_a_start_by_where_tasks_ran(f: &Fixture) {
    let s = f.store();
    let event = |worker: &str, kind: &str, now: Millis| NewEvent {
        task_id: None,
        worker: Some(worker.into()),
        kind: kind.into(),
        message: String::new(),
        data: None,
        now,
    };
    // Before the start (100): not counted.
    s.record_event(&event("w", "agent_restarting", 50))
        .await
        .unwrap();
    s.record_event(&event("w", "agent_restarting", 150))
        .await
        .unwrap();
    s.record_event(&event("w", "agent_restarting", 160))
        .await
        .unwrap();
    s.record_event(&event("w", "worker_restarted", 170))
        .await
        .unwrap();
    s.record_event(&event("v", "task_queued", 170))
        .await
        .unwrap();
    // w: an attempt of an earlier daemon run (500 MiB), two of this one (owner "me:1:", its
    // nonce after the prefix), and one in the pool (900 MiB).
    for (now, mb, pool, owner) in [
        (10, 500.0, false, "me:0:aa"),
        (200, 40.0, false, "me:1:bb"),
        (210, 60.0, false, "me:1:bb"),
        (220, 900.0, true, "me:1:bb"),
    ] {
        let mut new = task("w", "t", 0, now);
        new.routing.pool = pool;
        s.submit(&new).await.unwrap();
        let claim = if pool {
            s.claim_pool(owner, now + 1, LEASE, 4, &["w".into()]).await
        } else {
            s.claim("w", owner, now + 1, LEASE).await
        };
        let claim = claim.unwrap().unwrap();
        let finish = Finish {
            memory_peak_mb: Some(mb),
            ..done(TaskState::Succeeded, now + 2)
        };
        assert!(s.finish(&claim.fence(), &finish, None).await.unwrap());
    }
    let activity = s.activity_since(100, "me:1:").await.unwrap();
    assert_eq!(
        activity,
        [
            Activity {
                worker: "pool".into(),
                restarts: 0,
                last_restart: None,
                memory_peak_mb: Some(900.0),
            },
            Activity {
                worker: "w".into(),
                restarts: 2,
                last_restart: Some(170),
                memory_peak_mb: Some(60.0),
            },
        ]
    );
    assert_eq!(s.activity_since(1_000, "me:2:").await.unwrap(), []);
}

pub async fn metrics_count_ended_tasks_into_buckets_and_events_by_kind(f: &Fixture) {
    let s = f.store();
    for (i, (ms, mb)) in [(50, Some(10.0)), (700, Some(100.0)), (9_000, None)]
        .into_iter()
        .enumerate()
    {
        let now = i as Millis * 10;
        s.submit(&task("w", "t", 0, now)).await.unwrap();
        let claim = s.claim("w", "me", now + 1, LEASE).await.unwrap().unwrap();
        let finish = Finish {
            duration_ms: ms,
            memory_peak_mb: mb,
            ..done(TaskState::Succeeded, now + 2)
        };
        assert!(s.finish(&claim.fence(), &finish, None).await.unwrap());
    }
    s.submit(&task("v", "waiting", 0, 100)).await.unwrap();
    for (kind, worker) in [
        ("file_rejected", "w"),
        ("file_rejected", "v"),
        ("other", "w"),
    ] {
        let event = NewEvent {
            task_id: None,
            worker: Some(worker.into()),
            kind: kind.into(),
            message: String::new(),
            data: None,
            now: 200,
        };
        s.record_event(&event).await.unwrap();
    }

    let m = s
        .metrics(&["file_rejected", "agent_restarting"])
        .await
        .unwrap();
    assert_eq!(
        m.tasks,
        [
            (TaskState::Queued, None, 1),
            (TaskState::Succeeded, None, 3)
        ]
    );
    // Cumulative, at the bounds 100 ms, 500 ms, 1 s, 5 s, 10 s; 16 MiB, 64, 256.
    let d = &m.counters.duration_ms["w"];
    assert_eq!(
        (&d.counts[..5], d.count, d.sum),
        (&[1, 1, 2, 2, 3][..], 3, 9750.0)
    );
    let mem = &m.counters.memory_peak_mb["w"];
    assert_eq!(
        (&mem.counts[..3], mem.count, mem.sum),
        (&[1, 1, 2][..], 2, 110.0)
    );
    assert_eq!(m.counters, s.counters().await.unwrap());
    assert_eq!(
        m.events,
        [
            ("file_rejected".to_string(), Some("v".to_string()), 1),
            ("file_rejected".to_string(), Some("w".to_string()), 1)
        ]
    );
}

/// The counters as a list of `((worker, state, cause), n)`, for comparing.
fn ended(c: &Counters) -> Vec<((&str, &str, &str), u64)> {
    c.finished
        .iter()
        .map(|((w, s, k), n)| ((w.as_str(), s.as_str(), k.as_str()), *n))
        .collect()
}

pub async fn counters_count_each_end_by_worker_state_and_cause(f: &Fixture) {
    let s = f.store();
    assert_eq!(s.counters().await.unwrap(), Counters::default());
    // w: a success that waited 1 s, with its usage; a failure for good.
    s.submit(&task("w", "a", 0, 0)).await.unwrap();
    let a = s.claim("w", "me", 1_000, LEASE).await.unwrap().unwrap();
    let mut success = Finish {
        duration_ms: 700,
        memory_peak_mb: Some(20.0),
        ..done(TaskState::Succeeded, 1_700)
    };
    success.usage.input_tokens = Some(100);
    success.usage.output_tokens = Some(7);
    success.usage.cost_usd = Some(0.25);
    assert!(s.finish(&a.fence(), &success, None).await.unwrap());
    s.submit(&task("w", "b", 0, 2_000)).await.unwrap();
    let b = s.claim("w", "me", 2_001, LEASE).await.unwrap().unwrap();
    let config = Finish {
        cause: Some("config".into()),
        duration_ms: 20_000,
        ..done(TaskState::Failed, 2_050)
    };
    assert!(s.finish(&b.fence(), &config, None).await.unwrap());
    // v: dead of timeouts; cancelled queued; one whose daemon kept dying.
    s.submit(&task("v", "c", 0, 3_000)).await.unwrap();
    let c = s.claim("v", "me", 3_001, LEASE).await.unwrap().unwrap();
    let timeout = Finish {
        cause: Some("timeout".into()),
        ..done(TaskState::Dead, 3_002)
    };
    assert!(s.finish(&c.fence(), &timeout, None).await.unwrap());
    let d = s.submit(&task("v", "d", 0, 4_000)).await.unwrap().id();
    s.cancel(d, 4_001).await.unwrap();
    let mut poison = task("v", "poison", 0, 5_000);
    poison.max_attempts = 1;
    let poison = s.submit(&poison).await.unwrap().id();
    for round in 1..=2 {
        s.claim("v", "doomed", 5_000 + round, LEASE)
            .await
            .unwrap()
            .unwrap();
        s.recover_all_but("next", 5_000 + round).await.unwrap();
    }
    assert_eq!(s.get(poison).await.unwrap().unwrap().state, TaskState::Dead);
    // w: cancelled while it ran.
    let e = s.submit(&task("w", "e", 0, 6_000)).await.unwrap().id();
    s.claim("w", "me", 6_001, LEASE).await.unwrap().unwrap();
    s.cancel(e, 6_002).await.unwrap();

    let c = s.counters().await.unwrap();
    assert_eq!(
        ended(&c),
        [
            (("v", "cancelled", "cancelled"), 1),
            (("v", "dead", "interrupted"), 1),
            (("v", "dead", "timeout"), 1),
            (("w", "cancelled", "cancelled"), 1),
            (("w", "failed", "config"), 1),
            (("w", "succeeded", "none"), 1),
        ]
    );
    assert!(c.retries.is_empty());
    assert_eq!(
        (
            c.tokens_of("w", "input"),
            c.tokens_of("w", "output"),
            c.cost_of("w")
        ),
        (100, 7, 0.25)
    );
    assert_eq!(c.tokens_of("v", "input"), 0);
    // Only what ended through a result is observed: no cancelled task, no dead one without one.
    let d = &c.duration_ms["w"];
    assert_eq!(
        (&d.counts[..3], d.count, d.sum),
        (&[0, 0, 1][..], 2, 20_700.0)
    );
    assert_eq!((c.duration_ms["v"].count, c.duration_ms["v"].sum), (1, 5.0));
    let waited = &c.queue_wait_ms["w"];
    assert_eq!(
        (&waited.counts[..2], waited.count, waited.sum),
        (&[1, 2][..], 2, 1_001.0)
    );
    assert_eq!(
        (c.memory_peak_mb["w"].count, c.memory_peak_mb["w"].sum),
        (1, 20.0)
    );
    assert!(!c.memory_peak_mb.contains_key("v"));
    assert_eq!(c.finished_in(TaskState::Cancelled), 2);
}

pub async fn a_scheduled_retry_counts_its_cause_and_each_attempts_usage(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "a", 0, 0)).await.unwrap().id();
    let first = s.claim("w", "me", 10, LEASE).await.unwrap().unwrap();
    let mut retry = Finish {
        not_before: Some(40),
        cause: Some("idle_timeout".into()),
        ..done(TaskState::Queued, 20)
    };
    retry.usage.input_tokens = Some(30);
    retry.usage.output_tokens = Some(3);
    assert!(s.finish(&first.fence(), &retry, None).await.unwrap());
    let c = s.counters().await.unwrap();
    assert_eq!(c.retries[&("w".to_string(), "idle_timeout".to_string())], 1);
    assert_eq!(c.tokens_of("w", "input"), 30);
    assert!(c.finished.is_empty(), "a retry is no end");
    assert!(c.duration_ms.is_empty() && c.queue_wait_ms.is_empty());

    // The second attempt ends it; its wait is the first attempt's (queued at 0, started at 10).
    let second = s.claim("w", "me", 50, LEASE).await.unwrap().unwrap();
    let mut failed = Finish {
        cause: Some("crashed".into()),
        ..done(TaskState::Dead, 60)
    };
    failed.usage.input_tokens = Some(12);
    assert!(s.finish(&second.fence(), &failed, None).await.unwrap());
    let c = s.counters().await.unwrap();
    assert_eq!(ended(&c), [(("w", "dead", "crashed"), 1)]);
    assert_eq!(c.tokens_of("w", "input"), 42);
    assert_eq!(c.queue_wait_ms["w"].sum, 10.0);
    assert_eq!(c.retries.values().sum::<u64>(), 1);

    // Queued again by hand: nothing goes down, and its next end counts again.
    s.retry(id, 70).await.unwrap();
    assert_eq!(s.counters().await.unwrap(), c);
    let third = s.claim("w", "me", 80, LEASE).await.unwrap().unwrap();
    assert!(
        s.finish(&third.fence(), &done(TaskState::Succeeded, 90), None)
            .await
            .unwrap()
    );
    let c = s.counters().await.unwrap();
    assert_eq!(
        ended(&c),
        [
            (("w", "dead", "crashed"), 1),
            (("w", "succeeded", "none"), 1)
        ]
    );
    assert_eq!(c.duration_ms["w"].count, 2);
}

pub async fn pruning_leaves_the_counters_as_they_were(f: &Fixture) {
    let s = f.store();
    for (i, state) in [
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Succeeded,
    ]
    .into_iter()
    .enumerate()
    {
        let now = i as Millis * 100;
        s.submit(&task("w", "t", 0, now)).await.unwrap();
        let claim = s.claim("w", "me", now + 5, LEASE).await.unwrap().unwrap();
        let mut result = Finish {
            cause: (state == TaskState::Failed).then(|| "bad_input".to_string()),
            memory_peak_mb: Some(100.0),
            ..done(state, now + 10)
        };
        result.usage.cost_usd = Some(1.5);
        assert!(s.finish(&claim.fence(), &result, None).await.unwrap());
    }
    let cancelled = s.submit(&task("v", "t", 0, 400)).await.unwrap().id();
    s.cancel(cancelled, 401).await.unwrap();
    let before = s.counters().await.unwrap();
    assert_eq!(before.finished_in(TaskState::Succeeded), 2);
    assert_eq!(before.cost_of("w"), 4.5);

    let rule = super::Prune {
        limit: 2,
        ..Default::default()
    };
    assert_eq!(s.prune(&rule, 1_000).await.unwrap().len(), 2);
    assert_eq!(s.prune(&rule, 1_000).await.unwrap().len(), 2);
    assert!(s.list(&TaskFilter::default()).await.unwrap().is_empty());
    // The usage ledger goes too, with anything older than two days.
    let later = 10 * 24 * 3600 * 1000;
    let aged = super::Prune {
        finished_before: Some(later),
        limit: 100,
        ..rule
    };
    s.prune(&aged, later).await.unwrap();
    assert!(s.spend_since(0).await.unwrap().is_empty());
    assert_eq!(s.counters().await.unwrap(), before);
    assert_eq!(s.metrics(&[]).await.unwrap().counters, before);
}

pub async fn highest_priority_first_then_fifo(f: &Fixture) {
    let s = f.store();
    let a = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    let b = s.submit(&task("w", "b", 5, 2)).await.unwrap().id();
    let c = s.submit(&task("w", "c", 0, 3)).await.unwrap().id();
    let d = s.submit(&task("w", "d", 5, 4)).await.unwrap().id();
    let mut order = vec![];
    for now in 10..14 {
        let claim = s.claim("w", "me", now, LEASE).await.unwrap().unwrap();
        order.push(claim.task.id);
        assert!(
            s.finish(&claim.fence(), &done(TaskState::Succeeded, now), None)
                .await
                .unwrap()
        );
    }
    assert_eq!(order, vec![b, d, a, c]);
    assert!(s.claim("w", "me", 20, LEASE).await.unwrap().is_none());
}

pub async fn a_worker_runs_one_task_at_a_time_and_workers_are_independent(f: &Fixture) {
    let s = f.store();
    s.submit(&task("w", "a", 0, 1)).await.unwrap();
    s.submit(&task("w", "b", 0, 1)).await.unwrap();
    s.submit(&task("v", "c", 0, 1)).await.unwrap();
    let first = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    assert!(
        s.claim("w", "other", 2, LEASE).await.unwrap().is_none(),
        "w is busy"
    );
    assert!(
        s.claim("v", "me", 2, LEASE).await.unwrap().is_some(),
        "v is not"
    );
    s.finish(&first.fence(), &done(TaskState::Succeeded, 3), None)
        .await
        .unwrap();
    assert!(s.claim("w", "me", 4, LEASE).await.unwrap().is_some());
}

pub async fn an_empty_queue_has_no_next_due_time(f: &Fixture) {
    let s = f.store();
    assert_eq!(s.next_due("w").await.unwrap(), None, "no error, no timer");
    s.pause_worker("w", 1000, "paused", 1).await.unwrap();
    assert_eq!(
        s.next_due("w").await.unwrap(),
        None,
        "a pause alone is no work"
    );
}

pub async fn a_shorter_pause_does_not_cut_a_longer_one(f: &Fixture) {
    let s = f.store();
    s.pause_worker("w", 1_000_000, "by hand", 1).await.unwrap();
    s.pause_worker("w", 5_000, "usage limit", 2).await.unwrap();
    let p = s.pauses(3).await.unwrap();
    assert_eq!((p[0].until, p[0].reason.as_str()), (1_000_000, "by hand"));
    s.pause_worker("w", 2_000_000, "longer", 4).await.unwrap();
    assert_eq!(s.pauses(5).await.unwrap()[0].until, 2_000_000);
}

pub async fn not_before_holds_a_task_back(f: &Fixture) {
    let s = f.store();
    let mut t = task("w", "later", 0, 1);
    t.not_before = 100;
    s.submit(&t).await.unwrap();
    assert!(s.claim("w", "me", 99, LEASE).await.unwrap().is_none());
    assert_eq!(s.next_due("w").await.unwrap(), Some(100));
    assert!(s.claim("w", "me", 100, LEASE).await.unwrap().is_some());
}

pub async fn a_stale_claim_cannot_record_a_result(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    let stale = s.claim("w", "old", 10, LEASE).await.unwrap().unwrap();
    assert_eq!(s.recover_expired(50).await.unwrap(), Vec::<i64>::new());
    // The old owner's last heartbeat; then it stops. Its lease runs out and the task is
    // recovered.
    assert!(s.heartbeat(&stale.fence(), 60, LAPSING).await.unwrap());
    assert_eq!(recover_lapsed(s, 200, 1).await, vec![id]);
    let fresh = s.claim("w", "new", 201, LEASE).await.unwrap().unwrap();
    assert_eq!(
        fresh.task.attempts, 1,
        "the interrupted attempt was given back"
    );

    assert!(!s.heartbeat(&stale.fence(), 202, LEASE).await.unwrap());
    assert!(
        !s.finish(&stale.fence(), &done(TaskState::Failed, 203), None)
            .await
            .unwrap()
    );
    assert!(!s.release(&stale.fence(), "x", 203).await.unwrap());
    assert!(s.heartbeat(&fresh.fence(), 204, LEASE).await.unwrap());
    assert!(
        s.finish(&fresh.fence(), &done(TaskState::Succeeded, 205), None)
            .await
            .unwrap()
    );
    assert!(
        !s.finish(&fresh.fence(), &done(TaskState::Failed, 206), None)
            .await
            .unwrap(),
        "only once"
    );

    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Succeeded);
    let kinds: Vec<String> = s
        .events_of(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "task_queued",
            "task_started",
            "task_recovered",
            "task_started",
            "task_finished"
        ]
    );
}

pub async fn a_task_that_keeps_killing_its_daemon_ends_dead(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "poison", 0, 1)).await.unwrap().id();
    for round in 1..=3 {
        let c = s
            .claim("w", "doomed", 10 * round, LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.task.attempts, 1, "interruptions do not spend attempts");
        assert_eq!(
            s.recover_all_but("next", 10 * round + 1).await.unwrap(),
            vec![id]
        );
    }
    s.claim("w", "doomed", 50, LEASE).await.unwrap().unwrap();
    s.recover_all_but("next", 51).await.unwrap();
    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!((t.state, t.interruptions), (TaskState::Dead, 4));
    assert!(t.error.unwrap().contains("interrupted 4 times"));
    s.retry(id, 60).await.unwrap();
    assert_eq!(s.get(id).await.unwrap().unwrap().interruptions, 0);
}

pub async fn the_end_hook_sees_the_committed_view_and_only_at_the_end(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = |seen: &std::sync::Arc<std::sync::Mutex<Vec<(TaskState, usize)>>>| -> EndHook {
        let seen = seen.clone();
        Box::new(move |t: &Task, events: &[Event]| {
            seen.lock().unwrap().push((t.state, events.len()));
            Ok(())
        })
    };
    let c = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    let mut retry = done(TaskState::Queued, 3);
    retry.not_before = Some(3);
    s.finish(&c.fence(), &retry, Some(hook(&seen)))
        .await
        .unwrap();
    assert!(seen.lock().unwrap().is_empty(), "a retry is not an end");
    let c = s.claim("w", "me", 4, LEASE).await.unwrap().unwrap();
    s.finish(
        &c.fence(),
        &done(TaskState::Succeeded, 5),
        Some(hook(&seen)),
    )
    .await
    .unwrap();
    // submitted, started, retry_scheduled, started, succeeded
    assert_eq!(*seen.lock().unwrap(), vec![(TaskState::Succeeded, 5)]);
    assert!(
        !s.finish(&c.fence(), &done(TaskState::Failed, 6), Some(hook(&seen)))
            .await
            .unwrap()
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a fenced-out finish runs no hook"
    );
    assert_eq!(
        s.get(id).await.unwrap().unwrap().state,
        TaskState::Succeeded
    );
}

/// The runner's output files could not be written (a full disk): nothing of the result is
/// recorded, the claim still holds, and the task goes back to the queue with its attempt given
/// back, to run again, as after an interrupted attempt.
pub async fn a_failing_end_hook_undoes_the_result_and_leaves_the_claim_to_give_back(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    let c = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    let full: EndHook = Box::new(|_: &Task, _: &[Event]| {
        Err(Error::io(
            "writing the output files in",
            "/out/w",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ))
    });
    let e = s
        .finish(&c.fence(), &done(TaskState::Succeeded, 3), Some(full))
        .await
        .unwrap_err();
    assert!(e.is_storage_full(), "{e}");
    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Running, "the result was undone");
    assert_eq!((t.output, t.finished_at), (None, None));
    let kinds: Vec<String> = s
        .events_of(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(!kinds.iter().any(|k| k == "task_finished"), "{kinds:?}");
    // The claim holds: the runner gives the task back, its attempt not spent.
    assert!(s.release(&c.fence(), "disk full", 4).await.unwrap());
    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::Queued, 0));
    // And it runs again to its end, with a hook that succeeds.
    let c = s.claim("w", "me", 5, LEASE).await.unwrap().unwrap();
    let fine: EndHook = Box::new(|_: &Task, _: &[Event]| Ok(()));
    assert!(
        s.finish(&c.fence(), &done(TaskState::Succeeded, 6), Some(fine))
            .await
            .unwrap()
    );
    assert_eq!(
        s.get(id).await.unwrap().unwrap().state,
        TaskState::Succeeded
    );
}

pub async fn heartbeats_keep_a_lease(f: &Fixture) {
    let s = f.store();
    s.submit(&task("w", "a", 0, 1)).await.unwrap();
    // A lease that would lapse at once, renewed for long.
    let c = s.claim("w", "me", 10, LAPSING).await.unwrap().unwrap();
    assert!(s.heartbeat(&c.fence(), 11, LEASE).await.unwrap());
    // Past the first lease by either clock, the tests' and a server's.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(s.recover_expired(150).await.unwrap().is_empty());
    // A heartbeat's lease runs from the heartbeat: a lapsing one lapses.
    assert!(s.heartbeat(&c.fence(), 160, LAPSING).await.unwrap());
    assert_eq!(recover_lapsed(s, 191, 1).await, vec![c.task.id]);
}

/// When the earliest lease runs out, by the caller's clock (the daemon's lease keeper sleeps
/// until then), whichever clock the store compares leases with.
pub async fn the_next_lease_expiry_is_the_earliest_lease_by_the_callers_clock(f: &Fixture) {
    let s = f.store();
    assert_eq!(s.next_lease_expiry().await.unwrap(), None);
    s.submit(&task("a", "x", 0, 1)).await.unwrap();
    s.submit(&task("b", "y", 0, 1)).await.unwrap();
    let before = super::now_ms();
    s.claim("a", "me", before, LEASE).await.unwrap().unwrap();
    s.claim("b", "me", super::now_ms(), LEASE * 2)
        .await
        .unwrap()
        .unwrap();
    let after = super::now_ms();
    let next = s.next_lease_expiry().await.unwrap().unwrap();
    let lease = LEASE.as_millis() as Millis;
    // (A millisecond either way: a server's clock is read in whole milliseconds too.)
    assert!(
        (before + lease - 1..=after + lease + 1).contains(&next),
        "{next} is not {lease} ms after {before}..{after}"
    );
}

pub async fn recover_all_but_spares_the_current_owner(f: &Fixture) {
    let s = f.store();
    s.submit(&task("a", "x", 0, 1)).await.unwrap();
    s.submit(&task("b", "y", 0, 1)).await.unwrap();
    let mine = s.claim("a", "me", 2, LEASE).await.unwrap().unwrap();
    let theirs = s.claim("b", "gone", 2, LEASE).await.unwrap().unwrap();
    assert_eq!(
        s.recover_all_but("me", 3).await.unwrap(),
        vec![theirs.task.id]
    );
    assert!(s.heartbeat(&mine.fence(), 4, LEASE).await.unwrap());
}

pub async fn dedup_key_makes_submit_idempotent(f: &Fixture) {
    let s = f.store();
    let mut t = task("w", "a", 0, 1);
    t.dedup_key = Some("k".into());
    let first = s.submit(&t).await.unwrap();
    assert!(matches!(first, Submitted::New(_)));
    assert_eq!(
        s.submit(&t).await.unwrap(),
        Submitted::Duplicate(first.id())
    );
    assert_eq!(s.list(&TaskFilter::default()).await.unwrap().len(), 1);
}

/// An agent may print anything, NUL included (PostgreSQL's text cannot hold it): the result is
/// still recorded, or the task would run again and again as if its daemon kept dying.
pub async fn an_agents_nul_byte_does_not_stop_its_result_being_recorded(f: &Fixture) {
    let s = f.store();
    let id = s
        .submit(&task("w", "print\0this", 0, 1))
        .await
        .unwrap()
        .id();
    let claim = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    let finish = Finish {
        state: TaskState::Failed,
        output: Some("a\0b".into()),
        error: Some("exit 1: \0".into()),
        stderr_tail: Some("\0".into()),
        cause: Some("agent_error".into()),
        ..done(TaskState::Failed, 3)
    };
    assert!(s.finish(&claim.fence(), &finish, None).await.unwrap());
    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Failed);
    let output = t.output.unwrap();
    assert!(output == "a\0b" || output == "a\u{FFFD}b", "{output:?}");
    assert!(t.prompt.starts_with("print") && t.prompt.ends_with("this"));
}

pub async fn submit_many_queues_every_task_in_order_and_keeps_dedup_keys(f: &Fixture) {
    let s = f.store();
    let mut keyed = task("w", "keyed", 0, 1);
    keyed.dedup_key = Some("k".into());
    let first = s.submit(&keyed).await.unwrap().id();
    let got = s
        .submit_many(vec![
            task("w", "a", 0, 2),
            keyed.clone(),
            task("v", "b", 0, 2),
        ])
        .await
        .unwrap();
    assert_eq!(got[1], Submitted::Duplicate(first));
    assert!(matches!(got[0], Submitted::New(a) if a > first));
    assert!(matches!((got[0], got[2]), (Submitted::New(a), Submitted::New(b)) if b > a));
    let queued = s.events_of(got[2].id()).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].kind, "task_queued");
}

pub async fn cancel_and_retry(f: &Fixture) {
    let s = f.store();
    let q = s.submit(&task("w", "queued", 0, 1)).await.unwrap().id();
    let r = s.submit(&task("v", "running", 0, 1)).await.unwrap().id();
    let claim = s.claim("v", "me", 2, LEASE).await.unwrap().unwrap();
    assert_eq!(s.cancel(q, 3).await.unwrap(), TaskState::Queued);
    assert_eq!(s.cancel(r, 3).await.unwrap(), TaskState::Running);
    assert!(
        !s.heartbeat(&claim.fence(), 4, LEASE).await.unwrap(),
        "the runner learns of it"
    );
    // The running attempt's row says it was cancelled, and how long it had run.
    let attempts = s.attempts_of(r).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].outcome.as_str(), attempts[0].duration_ms),
        ("cancelled", Some(1))
    );
    assert!(s.attempts_of(q).await.unwrap().is_empty());
    assert!(matches!(
        s.cancel(q, 4).await,
        Err(Error::WrongState { .. })
    ));
    assert!(matches!(
        s.cancel(999, 4).await,
        Err(Error::NoSuchTask { id: 999 })
    ));

    s.retry(q, 5).await.unwrap();
    let t = s.get(q).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::Queued, 0));
    assert!(matches!(s.retry(q, 6).await, Err(Error::WrongState { .. })));
}

pub async fn finish_with_retry_keeps_the_reason_and_counts(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    let c = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    let mut f = done(TaskState::Queued, 3);
    f.not_before = Some(1003);
    f.error = Some("exit code 1".into());
    s.finish(&c.fence(), &f, None).await.unwrap();
    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.attempts, t.not_before),
        (TaskState::Queued, 1, 1003)
    );
    assert_eq!(t.finished_at, None);
    let counts = s.counts().await.unwrap();
    assert_eq!(counts[0].queued, 1);
}

pub async fn worker_sessions_are_kept_replaced_and_reset(f: &Fixture) {
    let s = f.store();
    assert_eq!(s.worker_session("w").await.unwrap(), None);
    let mut st = agentq_core::domain::SessionState {
        id: "a".into(),
        agent: "claude".into(),
        cwd: "/w".into(),
        tasks: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
    };
    s.save_worker_session("w", &st, 1).await.unwrap();
    st.tasks = 2;
    st.input_tokens = 50;
    s.save_worker_session("w", &st, 2).await.unwrap();
    assert_eq!(s.worker_session("w").await.unwrap(), Some(st.clone()));
    st.cost_usd = 0.5;
    assert!(s.update_worker_session("w", "a", &st, 3).await.unwrap());
    assert_eq!(s.worker_session("w").await.unwrap().unwrap().cost_usd, 0.5);
    // The agent whose conversation it is, and the output tokens, are kept as well.
    st.agent = "codex".into();
    st.output_tokens = 70;
    assert!(s.update_worker_session("w", "a", &st, 3).await.unwrap());
    assert_eq!(s.worker_session("w").await.unwrap(), Some(st.clone()));
    assert!(
        !s.update_worker_session("w", "other", &st, 3).await.unwrap(),
        "only the conversation joined"
    );
    assert!(s.reset_worker_session("w", "asked", 3).await.unwrap());
    assert!(
        !s.update_worker_session("w", "a", &st, 4).await.unwrap(),
        "a reset stands"
    );
    assert_eq!(s.worker_session("w").await.unwrap(), None);
    assert_eq!(s.worker_session("w").await.unwrap(), None);
    assert!(!s.reset_worker_session("w", "asked", 4).await.unwrap());
    let ev = s
        .events(&EventFilter {
            kind: Some("session_reset".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ev.len(), 2);
    assert!(
        ev[0].message.contains("conversation a left"),
        "{}",
        ev[0].message
    );
}

pub async fn a_paused_worker_claims_nothing_until_the_pause_ends(f: &Fixture) {
    let s = f.store();
    s.submit(&task("w", "a", 0, 1)).await.unwrap();
    s.pause_worker("w", 1000, "usage limit", 10).await.unwrap();
    assert!(s.claim("w", "me", 500, LEASE).await.unwrap().is_none());
    assert_eq!(
        s.next_due("w").await.unwrap(),
        Some(1000),
        "due when the pause ends"
    );
    assert_eq!(s.pauses(500).await.unwrap().len(), 1);
    assert!(s.pauses(1000).await.unwrap().is_empty());
    let c = s.claim("w", "me", 1000, LEASE).await.unwrap().unwrap();
    s.finish(
        &c.fence(),
        &Finish {
            usage: Usage {
                cost_usd: Some(0.25),
                input_tokens: Some(100),
                ..Default::default()
            },
            ..done(TaskState::Succeeded, 1001)
        },
        None,
    )
    .await
    .unwrap();
    let spend = s.spend_since(0).await.unwrap();
    assert_eq!(
        (spend[0].cost_usd, spend[0].input_tokens, spend[0].attempts),
        (0.25, 100, 1)
    );
    assert!(s.spend_since(2000).await.unwrap().is_empty());

    s.submit(&task("w", "b", 0, 1)).await.unwrap();
    s.pause_worker("w", 9_999_999, "by hand", 1100)
        .await
        .unwrap();
    assert!(s.resume_worker("w", "by hand", 1200).await.unwrap());
    assert!(s.claim("w", "me", 1300, LEASE).await.unwrap().is_some());
    assert!(!s.resume_worker("w", "again", 1400).await.unwrap());
}

pub async fn every_attempt_is_kept_with_its_cause_and_figures(f: &Fixture) {
    let s = f.store();
    let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    let c = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    let mut f = done(TaskState::Queued, 3);
    f.error = Some("timeout: still running after 1s".into());
    f.cause = Some("timeout".into());
    f.memory_peak_mb = Some(12.5);
    assert!(s.finish(&c.fence(), &f, None).await.unwrap());
    // A claim that is gone writes no attempt.
    assert!(!s.finish(&c.fence(), &f, None).await.unwrap());
    assert!(!s.release(&c.fence(), "late", 3).await.unwrap());
    assert_eq!(s.attempts_of(id).await.unwrap().len(), 1);
    let c = s.claim("w", "me", 4, LEASE).await.unwrap().unwrap();
    s.release(&c.fence(), "daemon shutting down", 5)
        .await
        .unwrap();
    let c = s.claim("w", "me", 6, LEASE).await.unwrap().unwrap();
    assert!(
        s.finish(&c.fence(), &done(TaskState::Succeeded, 7), None)
            .await
            .unwrap()
    );
    let t = s.get(id).await.unwrap().unwrap();
    assert_eq!(
        (t.cause, t.memory_peak_mb),
        (None, None),
        "the last attempt's"
    );
    let history = s.attempts_of(id).await.unwrap();
    let outline: Vec<(u32, &str, Option<&str>)> = history
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str(), a.cause.as_deref()))
        .collect();
    assert_eq!(
        outline,
        [
            (1, "failed", Some("timeout")),
            (2, "released", None),
            (2, "succeeded", None)
        ]
    );
    assert_eq!(history[0].memory_peak_mb, Some(12.5));
    assert_eq!(history[0].owner.as_deref(), Some("me"));
    let finished = s.events_of(id).await.unwrap().pop().unwrap();
    assert_eq!(finished.kind, "task_finished");
    assert_eq!(finished.data.unwrap()["state"], "succeeded");
}

pub async fn an_errored_worker_claims_nothing_until_restarted_and_resume_does_not_clear_it(
    f: &Fixture,
) {
    let s = f.store();
    s.submit(&task("w", "a", 0, 1)).await.unwrap();
    s.error_worker("w", "its agent process died 3 times", 2)
        .await
        .unwrap();
    assert!(s.claim("w", "me", 3, LEASE).await.unwrap().is_none());
    let p = s.pauses(3).await.unwrap();
    assert!(p[0].errored(), "{p:?}");
    assert!(!s.resume_worker("w", "by hand", 4).await.unwrap());
    assert!(
        s.claim("w", "me", 5, LEASE).await.unwrap().is_none(),
        "still errored"
    );
    // A pause on top keeps it errored.
    s.pause_worker("w", 1000, "usage limit", 6).await.unwrap();
    assert!(s.pauses(7).await.unwrap()[0].errored());
    let cleared = s.restart_worker("w", 8).await.unwrap().unwrap();
    assert!(cleared.errored());
    assert!(s.claim("w", "me", 9, LEASE).await.unwrap().is_some());
    assert_eq!(s.restart_worker("w", 10).await.unwrap(), None);
    let kinds: Vec<String> = s
        .events(&EventFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"worker_errored".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"worker_restarted".to_string()), "{kinds:?}");
}

pub async fn committed_events_reach_the_event_log_and_rolled_back_ones_do_not(f: &Fixture) {
    let (s, log_path) = (f.store(), &f.log_path);
    let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
    // Cancelling a task that is not there rolls back; nothing is logged for it.
    assert!(s.cancel(id + 1, 2).await.is_err());
    s.cancel(id, 3).await.unwrap();
    let lines = agentq_core::logfile::read_events(log_path, &Default::default()).unwrap();
    let kinds: Vec<(&str, Option<i64>)> = lines.iter().map(|e| (e.kind.as_str(), e.task)).collect();
    assert_eq!(
        kinds,
        [("task_queued", Some(id)), ("task_cancelled", Some(id))]
    );
    assert_eq!(lines[0].worker.as_deref(), Some("w"));
}

pub async fn the_pool_claims_up_to_its_limit_and_workers_never_claim_pool_tasks(f: &Fixture) {
    let s = f.store();
    let w = ["w".to_string()];
    let pooled = |prompt: &str| {
        let mut t = task("w", prompt, 0, 1);
        t.routing.pool = true;
        t.routing.class = Some("long".into());
        t
    };
    for p in ["a", "b", "c"] {
        s.submit(&pooled(p)).await.unwrap();
    }
    let own = s.submit(&task("w", "own", 0, 1)).await.unwrap().id();
    // The worker claims only its own task, and a running pool task does not hold it back.
    let first = s.claim_pool("me", 2, LEASE, 2, &w).await.unwrap().unwrap();
    assert!(first.task.routing.pool);
    let c = s.claim("w", "me", 3, LEASE).await.unwrap().unwrap();
    assert_eq!(c.task.id, own);
    assert_eq!(
        s.next_due("w").await.unwrap(),
        None,
        "pool tasks are not the worker's queue"
    );
    // At most two pool tasks run at once.
    assert!(s.claim_pool("me", 4, LEASE, 2, &w).await.unwrap().is_some());
    assert!(s.claim_pool("me", 5, LEASE, 2, &w).await.unwrap().is_none());
    assert_eq!(s.next_due_pool(&w).await.unwrap(), Some(1));
    let counts = s.pool_counts().await.unwrap();
    assert_eq!((counts.queued, counts.running, counts.long), (1, 2, 3));
    s.finish(&first.fence(), &done(TaskState::Succeeded, 6), None)
        .await
        .unwrap();
    assert!(s.claim_pool("me", 7, LEASE, 2, &w).await.unwrap().is_some());
    // A paused worker's pool tasks wait with it.
    s.submit(&pooled("d")).await.unwrap();
    s.pause_worker("w", 1000, "usage limit", 8).await.unwrap();
    assert!(s.claim_pool("me", 9, LEASE, 9, &w).await.unwrap().is_none());
    assert_eq!(s.next_due_pool(&w).await.unwrap(), Some(1000));
    // Only the given workers' tasks: one no longer configured waits.
    s.resume_worker("w", "back", 10).await.unwrap();
    let others = ["v".to_string()];
    assert!(
        s.claim_pool("me", 11, LEASE, 9, &others)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.next_due_pool(&others).await.unwrap(), None);
    assert!(
        s.claim_pool("me", 12, LEASE, 9, &w)
            .await
            .unwrap()
            .is_some()
    );
}

/// Claims race only where several processes share the store; the rules must hold anyway.
pub async fn concurrent_claims_never_run_two_tasks_of_a_worker_or_overfill_the_pool(f: &Fixture) {
    let s = f.store.clone();
    for i in 0..4 {
        s.submit(&task("w", &format!("own {i}"), 0, 1))
            .await
            .unwrap();
        let mut pooled = task("w", &format!("pooled {i}"), 0, 1);
        pooled.routing.pool = true;
        s.submit(&pooled).await.unwrap();
        s.submit(&pooled).await.unwrap();
    }
    let mut claims = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = s.clone();
        claims.spawn(async move {
            // Two daemons, four claimers each: each daemon's pool room is its own.
            let owner = format!("daemon{}", i % 2);
            let own = s.claim("w", &owner, 10, LEASE).await.unwrap();
            let pooled = s
                .claim_pool(&owner, 10, LEASE, 3, &["w".to_string()])
                .await
                .unwrap();
            (own.is_some(), pooled.is_some())
        });
    }
    let (mut own, mut pooled) = (0, 0);
    while let Some(joined) = claims.join_next().await {
        let (o, p) = joined.unwrap();
        own += o as u32;
        pooled += p as u32;
    }
    assert_eq!(
        (own, pooled),
        (1, 6),
        "one of the worker's, three in each daemon's pool"
    );
    let counts = s.pool_counts().await.unwrap();
    assert_eq!((counts.running, counts.queued), (6, 2));
    counts_agree(f.store()).await;
}

pub async fn concurrent_submits_with_one_dedup_key_make_one_task(f: &Fixture) {
    let s = f.store.clone();
    let mut submits = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        submits.spawn(async move {
            let mut t = task("w", "once", 0, 1);
            t.dedup_key = Some("file:w:token".into());
            s.submit(&t).await.unwrap()
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = submits.join_next().await {
        results.push(joined.unwrap());
    }
    let new: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Submitted::New(_)))
        .collect();
    assert_eq!(new.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.id() == new[0].id()), "{results:?}");
    assert_eq!(s.list(&TaskFilter::default()).await.unwrap().len(), 1);
}

/// The other process's view: a task and everything about it is the same read back.
pub async fn a_task_reads_back_as_it_was_written(f: &Fixture) {
    let s = f.store();
    let mut t = task("w", "line one\nline two", 7, 5);
    t.timeout_ms = Some(90_000);
    t.routing = super::Routing {
        pool: true,
        class: Some("long".into()),
        complexity: Some(0.75),
        route_reason: Some("route = auto, long".into()),
        max_memory: Some(1 << 30),
    };
    t.source = "file:x.prompt".into();
    let id = s.submit(&t).await.unwrap().id();
    let c = s
        .claim_pool("me", 6, LEASE, 1, &["w".to_string()])
        .await
        .unwrap()
        .unwrap();
    let f2 = Finish {
        exit_code: Some(3),
        error: Some("exit code 3".into()),
        stderr_tail: Some("boom".into()),
        cause: Some("crashed".into()),
        memory_peak_mb: Some(12.25),
        usage: Usage {
            session_id: Some("s-1".into()),
            cost_usd: Some(0.5),
            input_tokens: Some(10),
            output_tokens: Some(20),
            num_turns: Some(2),
        },
        ..done(TaskState::Failed, 8)
    };
    assert!(s.finish(&c.fence(), &f2, None).await.unwrap());
    let got = s.get(id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.prompt.as_str(),
            got.priority,
            got.timeout_ms,
            got.source.as_str()
        ),
        ("line one\nline two", 7, Some(90_000), "file:x.prompt")
    );
    assert_eq!(got.routing, t.routing);
    assert_eq!(got.usage, f2.usage);
    assert_eq!(
        (
            got.state,
            got.exit_code,
            got.cause.as_deref(),
            got.memory_peak_mb
        ),
        (TaskState::Failed, Some(3), Some("crashed"), Some(12.25))
    );
    assert_eq!((got.started_at, got.finished_at), (Some(6), Some(8)));
    let listed = &s.list(&TaskFilter::default()).await.unwrap()[0];
    assert_eq!(
        (
            listed.prompt_preview.as_str(),
            listed.pool,
            listed.class.as_deref()
        ),
        ("line one", true, Some("long"))
    );
    let filtered = s
        .list(&TaskFilter {
            state: Some(TaskState::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(filtered.is_empty());
    let queued = &s.events_of(id).await.unwrap()[0];
    assert_eq!(queued.data.as_ref().unwrap()["complexity"], 0.75);
    let latest = s
        .events(&EventFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].kind, "task_finished");
}

/// Worker leases are read on the server's clock on PostgreSQL: these tests use the real time.
pub async fn a_worker_lease_is_one_owners_until_released_or_expired(f: &Fixture) {
    use super::LeaseTake;
    let s = f.store();
    let (a, b) = ("a:1:x", "b:1:y");
    let now = super::now_ms;
    assert_eq!(
        s.take_worker_lease("w", "a", a, now(), LEASE)
            .await
            .unwrap(),
        LeaseTake::Held { moved_from: None }
    );
    match s
        .take_worker_lease("w", "b", b, now(), LEASE)
        .await
        .unwrap()
    {
        LeaseTake::Busy {
            host,
            owner,
            expires_in,
        } => {
            assert_eq!((host.as_str(), owner.as_str()), ("a", a));
            assert!(
                expires_in <= LEASE && expires_in > LEASE / 2,
                "{expires_in:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Taking it again renews it; so does renew_leases, which names what the owner holds.
    assert_eq!(
        s.take_worker_lease("w", "a", a, now(), LEASE)
            .await
            .unwrap(),
        LeaseTake::Held { moved_from: None }
    );
    assert_eq!(
        s.renew_leases("a", a, now(), LEASE).await.unwrap(),
        vec!["w".to_string()]
    );
    let leases = s.worker_leases(now()).await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].host.as_str(), leases[0].owner.as_str()),
        ("a", a)
    );
    // Only the holder claims the worker's tasks.
    let id = s.submit(&task("w", "t", 0, now())).await.unwrap().id();
    assert!(s.claim("w", b, now(), LEASE).await.unwrap().is_none());
    let c = s.claim("w", a, now(), LEASE).await.unwrap().unwrap();
    assert_eq!(c.task.id, id);
    // Released, it goes to the next taker, who learns where it was.
    assert!(!s.release_worker_lease("w", b, now()).await.unwrap());
    assert!(s.release_worker_lease("w", a, now()).await.unwrap());
    assert!(s.worker_leases(now()).await.unwrap().is_empty());
    assert_eq!(
        s.take_worker_lease("w", "b", b, now(), LEASE)
            .await
            .unwrap(),
        LeaseTake::Held {
            moved_from: Some("a".into())
        }
    );
    let moved = s
        .events(&EventFilter {
            kind: Some("worker_moved".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].worker.as_deref(), Some("w"));
    assert!(moved[0].message.contains("host b"), "{}", moved[0].message);
    // An expired lease is free too; one that no one took meanwhile is renewed (a late renewal
    // loses nothing), one another daemon took is not.
    let short = Duration::from_millis(100);
    for v in ["v", "u"] {
        s.take_worker_lease(v, "a", a, now(), short).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        s.take_worker_lease("v", "b", b, now(), LEASE)
            .await
            .unwrap(),
        LeaseTake::Held {
            moved_from: Some("a".into())
        }
    );
    assert_eq!(s.renew_leases("a", a, now(), LEASE).await.unwrap(), ["u"]);
    assert!(matches!(
        s.take_worker_lease("u", "b", b, now(), LEASE)
            .await
            .unwrap(),
        LeaseTake::Busy { .. }
    ));
}

/// A daemon that stalled past its lease while another host took the worker and let it go again
/// must not claim on the strength of what it held before: it takes the lease again first, which
/// records the move (and so resets a Claude worker's conversation, which lives on the other host).
pub async fn a_daemon_whose_worker_lease_was_taken_claims_only_after_taking_it_again(f: &Fixture) {
    use super::LeaseTake;
    let s = f.store();
    let (a, b) = ("a:1:x", "b:1:y");
    let now = super::now_ms;
    let short = Duration::from_millis(100);
    s.take_worker_lease("w", "a", a, now(), short)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A stalls; B takes the worker, and a clean stop of B releases it.
    let took = s
        .take_worker_lease("w", "b", b, now(), LEASE)
        .await
        .unwrap();
    assert_eq!(
        took,
        LeaseTake::Held {
            moved_from: Some("a".into())
        }
    );
    assert!(s.release_worker_lease("w", b, now()).await.unwrap());
    let id = s.submit(&task("w", "t", 0, now())).await.unwrap().id();
    assert!(
        s.claim("w", a, now(), LEASE).await.unwrap().is_none(),
        "a claim under a lease another daemon held since"
    );
    let again = s
        .take_worker_lease("w", "a", a, now(), LEASE)
        .await
        .unwrap();
    assert_eq!(
        again,
        LeaseTake::Held {
            moved_from: Some("b".into())
        }
    );
    assert_eq!(
        s.claim("w", a, now(), LEASE)
            .await
            .unwrap()
            .unwrap()
            .task
            .id,
        id
    );
}

pub async fn a_hosts_previous_run_is_recovered_and_its_leases_taken_over(f: &Fixture) {
    use super::LeaseTake;
    let s = f.store();
    let now = super::now_ms;
    let (old, new, other) = ("a:1:old", "a:2:new", "ab:1:other");
    s.join_host("a", old, 1, now(), LEASE).await.unwrap();
    s.join_host("ab", other, 1, now(), LEASE).await.unwrap();
    let hosts = s.hosts(now()).await.unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(names, ["a", "ab"]);
    let mine = s.submit(&task("w", "mine", 0, now())).await.unwrap().id();
    let theirs = s.submit(&task("v", "theirs", 0, now())).await.unwrap().id();
    s.take_worker_lease("w", "a", old, now(), LEASE)
        .await
        .unwrap();
    s.claim("w", old, now(), LEASE).await.unwrap().unwrap();
    s.claim("v", other, now(), LEASE).await.unwrap().unwrap();
    // The previous run of host `a` is gone (its id is taken again): its task, not host `ab`'s.
    s.join_host("a", new, 2, now(), LEASE).await.unwrap();
    assert_eq!(s.recover_host("a", new, now()).await.unwrap(), vec![mine]);
    assert_eq!(
        s.get(theirs).await.unwrap().unwrap().state,
        TaskState::Running
    );
    assert_eq!(
        s.take_worker_lease("w", "a", new, now(), LEASE)
            .await
            .unwrap(),
        LeaseTake::Held { moved_from: None }
    );
    assert_eq!(s.hosts(now()).await.unwrap()[0].owner, new);
    // Leaving releases its leases and ends its row.
    s.leave_host("a", new, now()).await.unwrap();
    assert_eq!(s.hosts(now()).await.unwrap().len(), 1);
    assert!(s.worker_leases(now()).await.unwrap().is_empty());
}

pub async fn pool_room_is_counted_per_daemon(f: &Fixture) {
    let s = f.store();
    let w = ["w".to_string()];
    for p in ["a", "b", "c"] {
        let mut t = task("w", p, 0, 1);
        t.routing.pool = true;
        s.submit(&t).await.unwrap();
    }
    assert!(s.claim_pool("h1", 2, LEASE, 1, &w).await.unwrap().is_some());
    assert!(s.claim_pool("h1", 2, LEASE, 1, &w).await.unwrap().is_none());
    // Another daemon's room is its own.
    assert!(s.claim_pool("h2", 2, LEASE, 1, &w).await.unwrap().is_some());
}

pub async fn pruning_removes_finished_tasks_only_and_metrics_never_go_down(f: &Fixture) {
    let s = f.store();
    // Five finished tasks of w (finished at 10, 20, ... 50), one of v, one queued and one
    // running of w, and an event of w's without a task at 5.
    let mut ids = Vec::new();
    for i in 1..=5 {
        let now = i * 10;
        let id = s.submit(&task("w", "t", 0, now - 5)).await.unwrap().id();
        let claim = s.claim("w", "me", now - 4, LEASE).await.unwrap().unwrap();
        let finish = Finish {
            duration_ms: 50 * i,
            memory_peak_mb: Some(10.0 * i as f64),
            ..done(
                if i == 2 {
                    TaskState::Dead
                } else {
                    TaskState::Succeeded
                },
                now,
            )
        };
        assert!(s.finish(&claim.fence(), &finish, None).await.unwrap());
        ids.push(id);
    }
    let v = s.submit(&task("v", "t", 0, 55)).await.unwrap().id();
    let claim = s.claim("v", "me", 56, LEASE).await.unwrap().unwrap();
    assert!(
        s.finish(&claim.fence(), &done(TaskState::Succeeded, 60), None)
            .await
            .unwrap()
    );
    let running = s.submit(&task("w", "runs", 0, 61)).await.unwrap().id();
    s.claim("w", "me", 62, LEASE).await.unwrap().unwrap();
    let queued = s.submit(&task("w", "waits", 0, 63)).await.unwrap().id();
    s.record_event(&NewEvent {
        task_id: None,
        worker: Some("w".into()),
        kind: "file_rejected".into(),
        message: String::new(),
        data: None,
        now: 5,
    })
    .await
    .unwrap();
    let kinds = ["file_rejected", "task_finished"];
    let metrics = || s.metrics(&kinds);
    let before = metrics().await.unwrap();
    let rule = |finished_before, keep_newest| super::Prune {
        finished_before,
        keep_newest,
        limit: 100,
        ..Default::default()
    };
    let ids_of = |p: &[super::Pruned]| p.iter().map(|p| p.id).collect::<Vec<_>>();

    // Dry: says what would go, removes nothing.
    let dry = s
        .prune(
            &super::Prune {
                dry_run: true,
                ..rule(Some(31), None)
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&dry), ids[..3]);
    assert!(s.get(ids[0]).await.unwrap().is_some());

    // By age: finished before 31.
    let gone = s.prune(&rule(Some(31), None), 100).await.unwrap();
    assert_eq!(ids_of(&gone), ids[..3]);
    assert_eq!(gone[1].state, TaskState::Dead);
    assert_eq!((gone[0].worker.as_str(), gone[0].pool), ("w", false));
    for id in &ids[..3] {
        assert!(s.get(*id).await.unwrap().is_none());
        assert!(s.events_of(*id).await.unwrap().is_empty());
        assert!(s.attempts_of(*id).await.unwrap().is_empty());
    }
    // What is left is known by id (the daemon removes the files of what is not).
    let asked: Vec<i64> = ids
        .iter()
        .copied()
        .chain([v, running, queued, 9_999])
        .collect();
    let mut left_ids = ids[3..].to_vec();
    left_ids.extend([v, running, queued]);
    left_ids.sort_unstable();
    assert_eq!(s.known_tasks(&asked).await.unwrap(), left_ids);
    assert!(s.known_tasks(&[]).await.unwrap().is_empty());
    let after = metrics().await.unwrap();
    assert_eq!(after.tasks, before.tasks, "tasks by state stay counted");
    assert_eq!(after.counters, before.counters);
    assert_eq!(after.events, before.events, "events by kind stay counted");
    let left = s
        .events(&EventFilter {
            kind: Some("file_rejected".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "the task-less event before the cutoff went: {left:?}"
    );

    // By count: the newest one of each worker is kept; queued and running never go.
    let gone = s.prune(&rule(None, Some(1)), 100).await.unwrap();
    assert_eq!(ids_of(&gone), [ids[3]]);
    assert!(s.get(ids[4]).await.unwrap().is_some());
    assert!(s.get(v).await.unwrap().is_some());
    // Everything finished, of one state, of one worker, in batches of one.
    let only = |worker: &str, states: Vec<TaskState>| super::Prune {
        worker: Some(worker.into()),
        states,
        limit: 1,
        ..rule(None, None)
    };
    assert!(
        s.prune(&only("w", vec![TaskState::Dead]), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids_of(&s.prune(&only("v", vec![]), 100).await.unwrap()),
        [v]
    );
    assert_eq!(
        ids_of(&s.prune(&only("w", vec![]), 100).await.unwrap()),
        [ids[4]]
    );
    assert!(s.prune(&only("w", vec![]), 100).await.unwrap().is_empty());
    assert_eq!(
        s.get(running).await.unwrap().unwrap().state,
        TaskState::Running
    );
    assert_eq!(
        s.get(queued).await.unwrap().unwrap().state,
        TaskState::Queued
    );
    let last = metrics().await.unwrap();
    assert_eq!(last.tasks, before.tasks);
    assert_eq!(last.counters, before.counters);
    assert_eq!(last.events, before.events);
    s.reclaim().await.unwrap();
    // Counts kept as tasks change still agree with the tasks that are left.
    let (kept, counted) = s.kept_and_counted().await;
    assert_eq!(kept, counted);
}

/// History as a database of the schema before the counters (SQLite's 9, PostgreSQL's 4) held
/// it, in SQL both take: tasks that ended (1 succeeded after a retry, 2 failed, 3 dead of its
/// daemon's deaths, 4 cancelled) and one waiting to be retried (5); their attempts, events and
/// usage; and what retention had folded of the tasks it removed.
pub const HISTORY_BEFORE_COUNTERS: &str = "
INSERT INTO tasks (worker, prompt, state, attempts, max_attempts, interruptions, not_before,
                   created_at, updated_at, started_at, finished_at, source, pool, class, cause,
                   duration_ms, memory_peak_mb) VALUES
    ('w', 'a', 'succeeded', 2, 3, 0, 0, 1000, 2700, 2000, 2700, 'cli', false, 'short', NULL, 700, 20.0),
    ('w', 'b', 'failed', 1, 3, 0, 0, 0, 100, 50, 100, 'cli', false, NULL, 'config', 20000, NULL),
    ('v', 'c', 'dead', 0, 1, 2, 0, 0, 100, NULL, 100, 'cli', false, NULL, NULL, NULL, NULL),
    ('v', 'd', 'cancelled', 0, 3, 0, 0, 0, 100, NULL, 100, 'cli', false, NULL, NULL, NULL, NULL),
    ('w', 'e', 'queued', 1, 3, 0, 0, 0, 90, 10, NULL, 'cli', false, NULL, 'timeout', 80, NULL);
INSERT INTO attempts (task_id, attempt, worker, owner, started_at, ended_at, outcome, cause,
                      duration_ms) VALUES
    (1, 1, 'w', 'h:1:a', 1500, 1600, 'failed', 'timeout', 100),
    (1, 2, 'w', 'h:1:a', 2000, 2700, 'succeeded', NULL, 700),
    (2, 1, 'w', 'h:1:a', 50, 100, 'failed', 'config', 50),
    (5, 1, 'w', 'h:1:a', 10, 90, 'failed', 'timeout', 80);
INSERT INTO events (ts, task_id, worker, kind, message, data) VALUES
    (1600, 1, 'w', 'task_retrying', 'attempt 1 failed', '{\"cause\": \"timeout\"}'),
    (90, 5, 'w', 'task_retrying', 'attempt 1 failed', '{\"cause\": \"timeout\"}'),
    (2700, 1, 'w', 'task_finished', 'succeeded', '{\"state\": \"succeeded\"}');
INSERT INTO usage_log (ts, worker, task_id, cost_usd, input_tokens, output_tokens) VALUES
    (1600, 'w', 1, 0.5, 100, 10),
    (2700, 'w', 1, 0.25, 50, 5);
INSERT INTO pruned_counts (state, class, n) VALUES ('succeeded', 'short', 3), ('failed', '', 1);
INSERT INTO pruned_buckets (metric, bound, n) VALUES
    ('duration_ms', 100, 1), ('duration_ms', 500, 3), ('duration_ms', 1000, 4),
    ('duration_ms', 3600000, 4), ('memory_peak_mb', 16, 0), ('memory_peak_mb', 64, 1);
INSERT INTO pruned_sums (metric, count, total) VALUES
    ('duration_ms', 4, 1234.0), ('memory_peak_mb', 2, 90.0);
INSERT INTO pruned_events (kind, worker, n) VALUES ('task_retrying', 'w', 2), ('task_finished', 'w', 4);
";

/// Checks that `s`, upgraded from [`HISTORY_BEFORE_COUNTERS`], counted that history once, and
/// goes on counting into the same rows.
pub async fn check_counters_seeded_from_history(s: &dyn Store) {
    let c = s.counters().await.unwrap();
    assert_eq!(
        ended(&c),
        [
            (("", "failed", ""), 1),
            (("", "succeeded", "none"), 3),
            (("v", "cancelled", "cancelled"), 1),
            (("v", "dead", "interrupted"), 1),
            (("w", "failed", "config"), 1),
            (("w", "succeeded", "none"), 1),
        ]
    );
    let retries: Vec<_> = c
        .retries
        .iter()
        .map(|((w, k), n)| (w.as_str(), k.as_str(), *n))
        .collect();
    assert_eq!(retries, [("w", "", 2), ("w", "timeout", 2)]);
    assert_eq!(
        (
            c.tokens_of("w", "input"),
            c.tokens_of("w", "output"),
            c.cost_of("w")
        ),
        (150, 15, 0.75)
    );
    // Cumulative, at the bounds 100 ms, 500 ms, 1 s, 5 s, 10 s, 30 s.
    let d = &c.duration_ms["w"];
    assert_eq!(
        (&d.counts[..6], d.count, d.sum),
        (&[0, 0, 1, 1, 1, 2][..], 2, 20_700.0)
    );
    let d = &c.duration_ms[""];
    assert_eq!(
        (&d.counts[..4], d.count, d.sum),
        (&[1, 3, 4, 4][..], 4, 1234.0)
    );
    assert!(
        !c.duration_ms.contains_key("v"),
        "no figure, no observation"
    );
    // Queued at 1000 and first started at 1500; queued at 0, started at 50.
    let waited = &c.queue_wait_ms["w"];
    assert_eq!(
        (&waited.counts[..2], waited.count, waited.sum),
        (&[1, 2][..], 2, 550.0)
    );
    let m = &c.memory_peak_mb["w"];
    assert_eq!((m.count, m.sum), (1, 20.0));
    let m = &c.memory_peak_mb[""];
    assert_eq!((&m.counts[..3], m.count, m.sum), (&[0, 1, 1][..], 2, 90.0));
    assert_eq!(s.metrics(&[]).await.unwrap().counters, c);

    // Task 5 runs again and succeeds in 700 ms: into the same rows as task 1.
    let claim = s.claim("w", "me", 3_000, LEASE).await.unwrap().unwrap();
    let result = Finish {
        duration_ms: 700,
        ..done(TaskState::Succeeded, 3_700)
    };
    assert!(s.finish(&claim.fence(), &result, None).await.unwrap());
    let after = s.counters().await.unwrap();
    assert_eq!(
        after.finished[&("w".into(), "succeeded".into(), "none".into())],
        2
    );
    let d = &after.duration_ms["w"];
    assert_eq!((&d.counts[..3], d.count), (&[0, 0, 2][..], 3));
}

/// A task's worktree record at `stage`, as `isolation = "worktree"` plans it for task `n` of `w`.
pub fn worktree(n: i64, stage: Stage) -> Worktree {
    Worktree {
        repo: "/r".into(),
        base_ref: "HEAD".into(),
        base: "abc123".into(),
        branch: agentq_core::worktree::branch_name("agentq", "w", Some(n)),
        path: format!("/s/.agentq/worktrees/{n}"),
        shared: false,
        commit: CommitMode::Auto,
        keep: Keep::UntilMerged,
        stage,
        removed: false,
        head: None,
        commits: vec![],
        auto_commit: None,
        uncommitted: vec![],
        files: vec![],
        insertions: 0,
        deletions: 0,
        diffstat: String::new(),
        merged: None,
        error: None,
    }
}

/// A task of `w` submitted at `now` with `wt` as its record.
fn isolated(wt: Worktree, now: Millis) -> NewTask {
    NewTask {
        worktree: Some(wt),
        ..task("w", "t", 0, now)
    }
}

/// Submits a task of `w` with a record at `stage`, runs it and ends it `state` at `now`.
async fn ended_with(s: &dyn Store, stage: Stage, state: TaskState, now: Millis) -> i64 {
    let id = s
        .submit(&isolated(worktree(0, Stage::Planned), now - 3))
        .await
        .unwrap()
        .id();
    let claim = s.claim("w", "me", now - 2, LEASE).await.unwrap().unwrap();
    assert!(
        s.finish(&claim.fence(), &done(state, now), None)
            .await
            .unwrap()
    );
    assert!(
        s.set_worktree(id, &worktree(id, stage), None, now)
            .await
            .unwrap()
    );
    id
}

pub async fn a_worktree_record_reads_back_through_get_and_claim(f: &Fixture) {
    let s = f.store();
    let planned = worktree(1, Stage::Planned);
    let id = s.submit(&isolated(planned.clone(), 1)).await.unwrap().id();
    let plain = s.submit(&task("w", "plain", 0, 2)).await.unwrap().id();
    assert_eq!(
        s.get(id).await.unwrap().unwrap().worktree,
        Some(planned.clone())
    );
    let got = s.get(plain).await.unwrap().unwrap();
    assert_eq!(got.worktree, None);
    let json = serde_json::to_value(&got).unwrap();
    assert!(json["worktree"].is_null(), "{json}");
    let claim = s.claim("w", "me", 3, LEASE).await.unwrap().unwrap();
    assert_eq!((claim.task.id, claim.task.worktree), (id, Some(planned)));
    // Many at once, and in the pool, read back as well.
    let mut pool = isolated(worktree(3, Stage::Planned), 4);
    pool.routing.pool = true;
    let many = s
        .submit_many(vec![task("v", "plain", 0, 4), pool.clone()])
        .await
        .unwrap();
    let claim = s
        .claim_pool("me", 5, LEASE, 1, &["w".to_string()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.task.id, many[1].id());
    assert_eq!(claim.task.worktree, pool.worktree);
    assert_eq!(s.get(many[0].id()).await.unwrap().unwrap().worktree, None);
    let json = serde_json::to_value(&claim.task).unwrap();
    assert_eq!(json["worktree"]["stage"], "planned", "{json}");
}

pub async fn set_worktree_changes_the_record_and_appends_its_event(f: &Fixture) {
    let s = f.store();
    let id = s
        .submit(&isolated(worktree(1, Stage::Planned), 1))
        .await
        .unwrap()
        .id();
    let mut ready = worktree(id, Stage::Ready);
    ready.head = Some("def456".into());
    ready.files.push(FileChange {
        path: "src/a.rs".into(),
        status: "M".into(),
        insertions: Some(3),
        deletions: None,
    });
    ready.insertions = 3;
    let said = ("worktree_ready", "1 file changed, 3 insertions(+)");
    assert!(s.set_worktree(id, &ready, Some(said), 7).await.unwrap());
    assert_eq!(
        s.get(id).await.unwrap().unwrap().worktree,
        Some(ready.clone())
    );
    let last = s.events_of(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.message.as_str(), last.ts),
        (said.0, said.1, 7)
    );
    assert_eq!(
        (last.task_id, last.worker.as_deref()),
        (Some(id), Some("w"))
    );
    assert_eq!(last.data.unwrap()["stage"], "ready");
    // It reaches the event log once committed, as every event does.
    let lines = agentq_core::logfile::read_events(&f.log_path, &Default::default()).unwrap();
    let logged = lines.last().unwrap();
    assert_eq!(
        (logged.kind.as_str(), logged.task, logged.worker.as_deref()),
        (said.0, Some(id), Some("w"))
    );
    // Without an event, none; a task that is not there: false, and nothing written.
    let before = s.events_of(id).await.unwrap().len();
    let merged = worktree(id, Stage::Merged);
    assert!(s.set_worktree(id, &merged, None, 8).await.unwrap());
    assert_eq!(s.events_of(id).await.unwrap().len(), before);
    assert_eq!(s.get(id).await.unwrap().unwrap().worktree, Some(merged));
    assert!(!s.set_worktree(id + 1, &ready, Some(said), 9).await.unwrap());
    assert!(s.events_of(id + 1).await.unwrap().is_empty());
    assert!(s.get(id + 1).await.unwrap().is_none());
}

pub async fn worktrees_lists_only_the_tasks_with_a_record(f: &Fixture) {
    let s = f.store();
    assert!(s.worktrees().await.unwrap().is_empty());
    let a = s
        .submit(&isolated(worktree(1, Stage::Planned), 1))
        .await
        .unwrap()
        .id();
    s.submit(&task("w", "plain", 0, 2)).await.unwrap();
    let mut pool = isolated(worktree(3, Stage::Planned), 3);
    pool.routing.pool = true;
    let b = s.submit(&pool).await.unwrap().id();
    // A task given a record after its submission is listed too.
    let c = s.submit(&task("v", "later", 0, 4)).await.unwrap().id();
    let claim = s.claim("w", "me", 5, LEASE).await.unwrap().unwrap();
    assert_eq!(claim.task.id, a);
    assert!(
        s.finish(&claim.fence(), &done(TaskState::Succeeded, 6), None)
            .await
            .unwrap()
    );
    assert!(
        s.set_worktree(c, &worktree(c, Stage::Failed), None, 7)
            .await
            .unwrap()
    );
    let rows = s.worktrees().await.unwrap();
    let seen: Vec<_> = rows
        .iter()
        .map(|r| (r.id, r.worker.as_str(), r.state, r.pool, r.worktree.stage))
        .collect();
    assert_eq!(
        seen,
        [
            (a, "w", TaskState::Succeeded, false, Stage::Planned),
            (b, "w", TaskState::Queued, true, Stage::Planned),
            (c, "v", TaskState::Queued, false, Stage::Failed),
        ]
    );
    assert_eq!((rows[0].created_at, rows[0].finished_at), (1, Some(6)));
    assert_eq!(rows[1].finished_at, None);
    assert_eq!(rows[0].worktree, worktree(1, Stage::Planned));
}

pub async fn a_task_its_worktree_holds_survives_pruning_until_its_change_is_settled(f: &Fixture) {
    let s = f.store();
    // Three finished tasks whose change waits to be merged or discarded, and the newest finished
    // task of w, without a worktree.
    let mut held = Vec::new();
    for (i, state) in [
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Succeeded,
    ]
    .into_iter()
    .enumerate()
    {
        held.push(ended_with(s, Stage::Ready, state, 10 * (i as Millis + 1)).await);
    }
    let plain = s.submit(&task("w", "plain", 0, 40)).await.unwrap().id();
    let claim = s.claim("w", "me", 41, LEASE).await.unwrap().unwrap();
    assert!(
        s.finish(&claim.fence(), &done(TaskState::Succeeded, 42), None)
            .await
            .unwrap()
    );
    let rule = |finished_before, keep_newest| super::Prune {
        finished_before,
        keep_newest,
        limit: 100,
        ..Default::default()
    };
    let ids_of = |p: &[super::Pruned]| p.iter().map(|p| p.id).collect::<Vec<_>>();
    let dry = super::Prune {
        dry_run: true,
        ..rule(Some(1_000), None)
    };
    assert_eq!(ids_of(&s.prune(&dry, 1_000).await.unwrap()), [plain]);
    // By count: the held tasks count among the newest, and are kept beyond them.
    assert!(
        s.prune(&rule(None, Some(1)), 1_000)
            .await
            .unwrap()
            .is_empty(),
        "the newest is kept, and the three older are held"
    );
    // By age, and everything: only the task without a worktree goes.
    assert_eq!(
        ids_of(&s.prune(&rule(Some(1_000), None), 1_000).await.unwrap()),
        [plain]
    );
    assert!(s.prune(&rule(None, None), 1_000).await.unwrap().is_empty());
    for id in &held {
        assert!(s.get(*id).await.unwrap().is_some(), "task {id} was held");
    }
    // Settled, each goes: merged, discarded, or nothing to merge.
    for (id, stage) in held
        .iter()
        .zip([Stage::Merged, Stage::Discarded, Stage::Empty])
    {
        assert!(
            s.set_worktree(*id, &worktree(*id, stage), None, 50)
                .await
                .unwrap()
        );
    }
    let by_count = s.prune(&rule(None, Some(1)), 1_000).await.unwrap();
    assert_eq!(ids_of(&by_count), held[..2]);
    let by_age = s.prune(&rule(Some(1_000), None), 1_000).await.unwrap();
    assert_eq!(ids_of(&by_age), held[2..]);
    assert!(s.worktrees().await.unwrap().is_empty());
    // A dead task whose worktree is still active is held too.
    let again = ended_with(s, Stage::Active, TaskState::Dead, 60).await;
    assert!(s.prune(&rule(None, None), 1_000).await.unwrap().is_empty());
    assert!(s.get(again).await.unwrap().is_some());
    counts_agree(s).await;
}

pub async fn a_record_that_does_not_read_leaves_the_task_readable(f: &Fixture) {
    let s = f.store();
    let id = s
        .submit(&isolated(worktree(1, Stage::Planned), 1))
        .await
        .unwrap()
        .id();
    s.write_worktree_text(id, r#"{"stage": "sideways"}"#).await;
    let got = s.get(id).await.unwrap().unwrap();
    assert_eq!((got.id, got.worktree), (id, None));
    let claim = s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
    assert_eq!((claim.task.id, claim.task.worktree), (id, None));
    assert!(s.worktrees().await.unwrap().is_empty());
}
