//! `agentq diff`, `merge`, `discard` and `worktrees`: the changes tasks made in worktrees of their
//! own, for review (the work is `agentq_daemon::worktree`'s, which the HTTP API calls too).

use std::path::Path;

use crate::cli::{DiffArgs, IdArgs, MergeArgs, WorktreesAction, WorktreesArgs};
use crate::commands::{load_config, open_store, print_json};
use agentq_core::error::Result;
use agentq_core::units::format_size;
use agentq_daemon::worktree;

pub async fn diff(explicit: Option<&Path>, args: DiffArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let text = worktree::diff(&*store, args.id, args.stat).await?;
    if args.out.json {
        let task = store.get(args.id).await?;
        print_json(&serde_json::json!({
            "id": args.id,
            "worktree": task.and_then(|t| t.worktree),
            if args.stat { "stat" } else { "diff" }: text,
        }));
    } else {
        print!("{text}");
    }
    Ok(())
}

pub async fn merge(explicit: Option<&Path>, args: MergeArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let merged = worktree::merge(&*store, args.id, args.into.as_deref(), args.squash).await?;
    if args.out.json {
        print_json(&merged);
    } else {
        println!(
            "task {}: {}",
            args.id,
            merged["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn discard(explicit: Option<&Path>, args: IdArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let done = worktree::discard(&*store, args.id).await?;
    if args.out.json {
        print_json(&done);
    } else if done["already"] == true {
        println!("task {}: its change was already discarded", args.id);
    } else {
        println!(
            "task {}: {}",
            args.id,
            done["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn worktrees(explicit: Option<&Path>, args: WorktreesArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    if let Some(WorktreesAction::Prune { dry_run, out }) = args.action {
        let pruned = worktree::prune(&config, &*store, dry_run).await?;
        if out.json {
            print_json(&pruned);
            return Ok(());
        }
        let acted = pruned["pruned"].as_array().cloned().unwrap_or_default();
        if acted.is_empty() {
            println!("nothing to prune");
        }
        for a in &acted {
            let who = match a["task"].as_i64() {
                Some(id) => format!("task {id}"),
                None => "no task".to_string(),
            };
            println!(
                "{}{who}: {} ({})",
                if dry_run { "would prune " } else { "pruned " },
                a["path"].as_str().unwrap_or(""),
                a["why"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    let listed = worktree::list(&config, &*store).await?;
    if args.out.json {
        print_json(&listed);
        return Ok(());
    }
    if listed.is_empty() {
        println!("no worktrees");
        return Ok(());
    }
    println!(
        "{:>6}  {:<12} {:<10} {:<9} {:>9}  {:<28} CHANGE",
        "TASK", "WORKER", "STATE", "WORKTREE", "SIZE", "BRANCH"
    );
    for l in &listed {
        let dash = || "-".to_string();
        println!(
            "{:>6}  {:<12} {:<10} {:<9} {:>9}  {:<28} {}{}",
            l.task.map_or_else(dash, |t| t.to_string()),
            l.worker.clone().unwrap_or_else(dash),
            l.state.map_or_else(dash, |s| s.to_string()),
            l.stage.map_or_else(dash, |s| s.to_string()),
            if l.exists {
                format_size(l.size)
            } else {
                "removed".into()
            },
            l.branch.clone().unwrap_or_else(dash),
            l.diffstat.clone().unwrap_or_default(),
            l.prune
                .as_deref()
                .map(|p| format!("  [prune: {p}]"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

/// The worktree lines of `agentq show`.
pub fn print_summary(id: i64, wt: &agentq_core::worktree::Worktree) {
    use agentq_core::worktree::Stage;
    let short = |s: &str| s[..s.len().min(10)].to_string();
    let branch = if wt.branch.is_empty() {
        "(named when it starts)".to_string()
    } else {
        wt.branch.clone()
    };
    println!(
        "worktree:    {} ({}{})",
        if wt.path.is_empty() {
            "not made yet"
        } else {
            wt.path.as_str()
        },
        wt.stage,
        if wt.removed { ", folder removed" } else { "" }
    );
    println!(
        "branch:      {branch} from {} ({}) in {}",
        short(&wt.base),
        wt.base_ref,
        wt.repo
    );
    match wt.stage {
        Stage::Ready | Stage::Merged => {
            println!("change:      {}", wt.diffstat());
            for c in &wt.commits {
                println!("  commit     {} {}", short(&c.sha), c.subject);
            }
            for f in &wt.files {
                let counts = match (f.insertions, f.deletions) {
                    (Some(i), Some(d)) => format!("+{i} -{d}"),
                    _ => "binary".to_string(),
                };
                println!("  {}          {} ({counts})", f.status, f.path);
            }
            for u in &wt.uncommitted {
                println!("  uncommitted {u}");
            }
            if let Some(m) = &wt.merged {
                println!(
                    "merged:      into {} as {}{}",
                    m.into,
                    short(&m.commit),
                    if m.squash { " (squashed)" } else { "" }
                );
            } else {
                println!(
                    "review:      agentq diff {id} | agentq merge {id} [--into BRANCH] [--squash] | agentq discard {id}"
                );
            }
        }
        _ => {}
    }
    if let Some(e) = &wt.error {
        println!("worktree error: {e}");
    }
}
