//! Tasks in git worktrees of their own (`isolation = "worktree"`), end to end: the real agentq
//! binary, real git repositories, command agents that edit files and commit, and the real
//! `claude` CLI against the fake API for a persistent worker's shared worktree.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs git in `dir`; returns its stdout, panicking with its stderr when it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A repository at `<project>/repo` on branch `main`, with `a.txt` committed.
fn repo(p: &Project) -> std::path::PathBuf {
    let dir = p.path("repo");
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["config", "user.name", "Test"]);
    git(&dir, &["config", "user.email", "test@example.com"]);
    std::fs::write(dir.join("a.txt"), "one\ntwo\nthree\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "first"]);
    dir
}

/// An agent that writes its prompt's first word as a file named after the task, lists the files
/// it sees (its result), and commits when the prompt says "commit".
const EDITING_AGENT: &str = r#"["sh", "-c", "p=$(cat); echo \"$p\" > \"t$AGENTQ_TASK_ID.txt\"; sleep 0.3; case \"$p\" in *commit*) git add -A && git commit -q -m \"agent: $p\";; esac; ls | tr '\n' ' '"]"#;

/// An agent that writes its prompt over a.txt's second line (so two tasks conflict).
const LINE_AGENT: &str =
    r#"["sh", "-c", "p=$(cat); printf 'one\n%s\nthree\n' \"$p\" > a.txt; echo edited"]"#;

fn worktree(p: &Project, id: i64) -> Value {
    p.task(id)["worktree"].clone()
}

fn files(wt: &Value) -> Vec<String> {
    wt["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// Eight pool tasks at once on one repository: each in its own worktree on its own branch, seeing
/// none of the others' files, and each branch holding only its own change, committed by the
/// agent or by agentq.
#[test]
fn parallel_pool_tasks_each_end_on_their_own_branch_with_only_their_own_change() {
    let p = Project::new(&format!(
        "[pool]\nagent = \"command\"\ncommand = {EDITING_AGENT}\nmax_workers = 8\nisolation = \"worktree\"\nrepo = \"repo\"\n"
    ));
    let repo = repo(&p);
    let daemon = p.start();
    let ids: Vec<i64> = (0..8)
        .map(|k| {
            let prompt = if k % 2 == 0 {
                format!("edit {k} and commit")
            } else {
                format!("edit {k}")
            };
            p.ok(&["submit", "--pool", &prompt]).trim().parse().unwrap()
        })
        .collect();
    p.wait_all(&ids);
    for (k, id) in ids.iter().enumerate() {
        let wt = worktree(&p, *id);
        assert_eq!(wt["stage"], "ready", "{wt}");
        assert_eq!(wt["branch"], format!("agentq/pool/{id}"));
        let own = format!("t{id}.txt");
        assert_eq!(files(&wt), std::slice::from_ref(&own), "task {id}: {wt}");
        assert_eq!(wt["diffstat"], "1 file changed, 1 insertion(+)", "{wt}");
        // What the agent saw: the repository's file and its own, nobody else's.
        let seen = p.output(*id);
        assert_eq!(
            seen.trim(),
            format!("a.txt {own}"),
            "task {id} saw {seen:?}"
        );
        let commits = wt["commits"].as_array().unwrap();
        assert_eq!(commits.len(), 1, "{wt}");
        if k % 2 == 0 {
            assert!(wt["auto_commit"].is_null(), "the agent committed: {wt}");
            assert!(
                commits[0]["subject"]
                    .as_str()
                    .unwrap()
                    .starts_with("agent: ")
            );
        } else {
            assert_eq!(
                wt["auto_commit"], commits[0]["sha"],
                "agentq committed: {wt}"
            );
            assert!(
                commits[0]["subject"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("agentq: task {id}"))
            );
        }
        let on_branch = git(
            &repo,
            &["diff", "--name-only", "main", &format!("agentq/pool/{id}")],
        );
        assert_eq!(on_branch.trim(), own);
    }
    // The shared checkout was never touched.
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&repo, &["ls-files"]).trim(),
        "a.txt",
        "nothing was added to the checkout"
    );
    assert!(daemon.stop().success());
}

/// `diff`, a clean merge into the checked-out branch (its files follow), a second change to the
/// same line refused with the conflicting file named and the repository left exactly as it was,
/// a squash merge into a branch not checked out, and `discard`.
#[test]
fn merge_applies_a_clean_change_and_refuses_a_conflict_leaving_the_repository_as_it_was() {
    let p = Project::new(&format!(
        "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {LINE_AGENT}\nisolation = \"worktree\"\nworktree = \"per-task\"\nrepo = \"repo\"\n"
    ));
    let repo = repo(&p);
    // Both start from the same base: submitted before either runs.
    let first = p.submit("w", "TWO");
    let second = p.submit("w", "deux");
    let daemon = p.start();
    p.wait_all(&[first, second]);

    let patch = p.ok(&["diff", &first.to_string()]);
    assert!(patch.contains("-two\n+TWO"), "{patch}");
    let stat = p.ok(&["diff", "--stat", &first.to_string()]);
    assert!(
        stat.contains("a.txt") && stat.contains("1 file changed"),
        "{stat}"
    );

    let merged = p.json(&["merge", &first.to_string()]);
    assert_eq!(merged["into"], "main", "{merged}");
    assert_eq!(
        std::fs::read_to_string(repo.join("a.txt")).unwrap(),
        "one\nTWO\nthree\n"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    let wt = worktree(&p, first);
    assert_eq!(wt["stage"], "merged");
    assert_eq!(wt["removed"], true, "the merged task's worktree goes: {wt}");
    assert!(!Path::new(wt["path"].as_str().unwrap()).exists());
    assert_eq!(
        git(&repo, &["branch", "--list", &format!("agentq/w/{first}")]),
        "",
        "and its branch"
    );

    // The second changed the same line from the same base.
    let before = (
        git(&repo, &["rev-parse", "HEAD"]),
        git(&repo, &["status", "--porcelain"]),
        std::fs::read(repo.join("a.txt")).unwrap(),
        git(&repo, &["for-each-ref"]),
    );
    let out = p.run(&["merge", &second.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("does not merge cleanly") && err.contains("a.txt"),
        "{err}"
    );
    let after = (
        git(&repo, &["rev-parse", "HEAD"]),
        git(&repo, &["status", "--porcelain"]),
        std::fs::read(repo.join("a.txt")).unwrap(),
        git(&repo, &["for-each-ref"]),
    );
    assert_eq!(before, after, "the repository is exactly as it was");
    assert_eq!(worktree(&p, second)["stage"], "ready", "still to review");

    // Squashed into a branch nobody has checked out.
    git(&repo, &["branch", "side", "HEAD~1"]);
    let squashed = p.json(&["merge", &second.to_string(), "--into", "side", "--squash"]);
    assert_eq!(squashed["into"], "side");
    let side = git(&repo, &["show", "side:a.txt"]);
    assert_eq!(side, "one\ndeux\nthree\n");
    assert_eq!(
        git(&repo, &["rev-list", "--count", "--parents", "-1", "side"])
            .split_whitespace()
            .count(),
        1,
        "a squash is one commit"
    );
    assert_eq!(git(&repo, &["rev-list", "--count", "side"]).trim(), "2");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "", "main untouched");

    // A third, thrown away.
    let third = p.submit("w", "drei");
    p.wait_all(&[third]);
    let wt = worktree(&p, third);
    let done = p.json(&["discard", &third.to_string()]);
    assert_eq!(done["discarded"], true);
    assert!(!Path::new(wt["path"].as_str().unwrap()).exists());
    assert_eq!(
        git(&repo, &["branch", "--list", &format!("agentq/w/{third}")]),
        ""
    );
    assert_eq!(worktree(&p, third)["stage"], "discarded");
    let again = p.run(&["merge", &third.to_string()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("discarded"));
    // git knows of no worktree that is gone.
    let listed = git(&repo, &["worktree", "list", "--porcelain"]);
    assert!(!listed.contains("prunable"), "{listed}");
    assert!(daemon.stop().success());
}

/// What cannot be a worktree is refused at submit, nothing queued: a folder outside any
/// repository, a base that does not exist, a branch that exists, uncommitted changes where a clean
/// base is required; and `--repo` without isolation.
#[test]
fn submit_refuses_what_cannot_be_a_worktree() {
    let p = Project::new(&format!(
        "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {LINE_AGENT}\nisolation = \"worktree\"\nworktree = \"per-task\"\nrepo = \"repo\"\nrequire_clean_base = true\n\n[[worker]]\nname = \"plain\"\nagent = \"command\"\ncommand = [\"cat\"]\ncwd = \"elsewhere\"\n"
    ));
    let repo = repo(&p);
    std::fs::create_dir_all(p.path("elsewhere")).unwrap();
    let refused = |args: &[&str], says: &str| {
        let out = p.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(
        &["submit", "-w", "plain", "--isolation", "worktree", "x"],
        "not in a git repository",
    );
    refused(
        &["submit", "-w", "w", "--base", "no-such-branch", "x"],
        "no-such-branch",
    );
    git(&repo, &["branch", "taken"]);
    refused(&["submit", "-w", "w", "--branch", "taken", "x"], "taken");
    refused(
        &["submit", "-w", "plain", "--repo", "repo", "x"],
        "--isolation",
    );
    std::fs::write(repo.join("a.txt"), "dirty\n").unwrap();
    refused(&["submit", "-w", "w", "x"], "uncommitted");
    assert_eq!(
        p.json(&["tasks"]).as_array().unwrap().len(),
        0,
        "nothing queued"
    );
    // A named branch that is free, on a clean repository, is taken as given.
    git(&repo, &["checkout", "-q", "a.txt"]);
    let id = p.ok(&["submit", "-w", "w", "--branch", "fix/it", "x"]);
    let wt = worktree(&p, id.trim().parse().unwrap());
    assert_eq!(wt["branch"], "fix/it");
    assert_eq!(wt["stage"], "planned");
    assert_eq!(
        wt["base"].as_str().unwrap(),
        git(&repo, &["rev-parse", "HEAD"]).trim()
    );
}

/// A prompt file dropped for an isolated worker gets a worktree like any task; one for a worker
/// whose repository is not one is set aside with the reason.
#[test]
fn prompt_files_follow_their_folders_isolation() {
    let p = Project::new(&format!(
        "[intake]\nsettle = \"50ms\"\n\n[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {LINE_AGENT}\nisolation = \"worktree\"\nrepo = \"repo\"\n\n[[worker]]\nname = \"bad\"\nagent = \"command\"\ncommand = [\"cat\"]\nisolation = \"worktree\"\nrepo = \"notrepo\"\n"
    ));
    repo(&p);
    std::fs::create_dir_all(p.path("notrepo")).unwrap();
    let daemon = p.start();
    p.drop_file(".queue/w/fix.prompt", b"FIXED");
    p.drop_file(".queue/bad/x.prompt", b"anything");
    wait_until(Duration::from_secs(30), "the file's task to end", || {
        p.json(&["tasks", "-w", "w"])
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "succeeded")
    });
    let id = p.json(&["tasks", "-w", "w"])[0]["id"].as_i64().unwrap();
    let wt = worktree(&p, id);
    assert_eq!(wt["stage"], "ready", "{wt}");
    assert_eq!(
        wt["shared"], true,
        "a named worker keeps one worktree: {wt}"
    );
    assert_eq!(wt["branch"], "agentq/w");
    wait_until(
        Duration::from_secs(10),
        "the bad file to be set aside",
        || p.path(".queue/bad/rejected/x.prompt.reason").exists(),
    );
    let reason = read(&p.path(".queue/bad/rejected/x.prompt.reason"));
    assert!(reason.contains("not in a git repository"), "{reason}");
    assert!(daemon.stop().success());
}

/// A daemon killed mid-attempt leaves the worktree for the retry, which goes on in it; a task
/// cancelled while no daemon ran is settled by `worktrees prune`, which also removes a worktree
/// folder no task names, through git (no broken `.git/worktrees` entry left).
#[test]
fn a_killed_daemon_leaves_the_worktree_for_the_retry_and_prune_settles_the_rest() {
    let agent = r#"["sh", "-c", "p=$(cat); echo \"$AGENTQ_ATTEMPT\" >> attempts.txt; case \"$p\" in *slow*) [ -e slept ] || { touch slept; echo started > ../../../started; sleep 60; };; esac; echo ok"]"#;
    let p = Project::new(&format!(
        "[defaults]\nbackoff = \"10ms\"\n\n[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {agent}\nisolation = \"worktree\"\nworktree = \"per-task\"\nrepo = \"repo\"\n"
    ));
    let repo = repo(&p);
    let id = p.submit("w", "slow one");
    let daemon = p.start();
    wait_until(Duration::from_secs(30), "the agent to start", || {
        p.path("started").exists()
    });
    let path = worktree(&p, id)["path"].as_str().unwrap().to_string();
    assert!(Path::new(&path).join("slept").exists());
    daemon.kill9();

    // The next daemon runs it again, in the same worktree: what the first attempt left is there.
    let daemon = p.start();
    p.wait_all(&[id]);
    let wt = worktree(&p, id);
    assert_eq!(wt["path"], path.as_str());
    assert_eq!(wt["stage"], "ready", "{wt}");
    let mut changed = files(&wt);
    changed.sort();
    assert_eq!(changed, ["attempts.txt", "slept"], "{wt}");
    assert!(daemon.stop().success());

    // Killed again mid-attempt, and cancelled while no daemon runs.
    std::fs::remove_file(p.path("started")).unwrap();
    let next = p.submit("w", "slow two");
    let daemon = p.start();
    wait_until(Duration::from_secs(30), "the agent to start", || {
        p.path("started").exists()
    });
    daemon.kill9();
    p.ok(&["cancel", &next.to_string()]);
    assert_eq!(worktree(&p, next)["stage"], "active");
    // A worktree made by hand where agentq keeps its own, with no task.
    let stray = p.path(".agentq/worktrees/9999");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "stray",
            stray.to_str().unwrap(),
        ],
    );
    let listed = p.json(&["worktrees"]);
    let why: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["prune"].as_str().map(str::to_string))
        .collect();
    assert_eq!(why.len(), 2, "{listed}");
    let dry = p.json(&["worktrees", "prune", "--dry-run"]);
    assert_eq!(dry["pruned"].as_array().unwrap().len(), 2, "{dry}");
    assert!(stray.exists(), "a dry run does nothing");
    p.ok(&["worktrees", "prune"]);
    assert!(!stray.exists());
    let wt = worktree(&p, next);
    assert_eq!(wt["stage"], "ready", "its change is recorded: {wt}");
    let git_list = git(&repo, &["worktree", "list", "--porcelain"]);
    assert!(!git_list.contains("9999"), "{git_list}");
    assert!(!git_list.contains("prunable"), "{git_list}");
    assert_eq!(
        git(&repo, &["worktree", "prune", "--dry-run", "--verbose"]),
        "",
        "nothing broken left for git to prune"
    );
    // Retention keeps a task whose change is open; once discarded, it may go.
    let clean = p.json(&["clean"]);
    assert_eq!(clean["removed"], 0, "{clean}");
    p.ok(&["discard", &id.to_string()]);
    p.ok(&["discard", &next.to_string()]);
    let clean = p.json(&["clean"]);
    assert_eq!(clean["removed"], 2, "{clean}");
}

/// `keep = "never"`: the folder goes as soon as the task ends; the branch, and so the change,
/// stays for review. A task that changed nothing leaves neither.
#[test]
fn keep_never_removes_the_folder_but_not_the_change() {
    let agent =
        r#"["sh", "-c", "p=$(cat); [ \"$p\" = nothing ] || echo \"$p\" > new.txt; echo ok"]"#;
    let p = Project::new(&format!(
        "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {agent}\nisolation = \"worktree\"\nworktree = \"per-task\"\nkeep = \"never\"\nrepo = \"repo\"\n"
    ));
    let repo = repo(&p);
    let daemon = p.start();
    let changed = p.submit("w", "something");
    let nothing = p.submit("w", "nothing");
    p.wait_all(&[changed, nothing]);
    let wt = worktree(&p, changed);
    assert_eq!(
        (wt["stage"].as_str(), wt["removed"].as_bool()),
        (Some("ready"), Some(true))
    );
    assert!(!Path::new(wt["path"].as_str().unwrap()).exists());
    assert!(p.ok(&["diff", &changed.to_string()]).contains("+something"));
    let wt = worktree(&p, nothing);
    assert_eq!(wt["stage"], "empty");
    assert_eq!(
        git(&repo, &["branch", "--list", &format!("agentq/w/{nothing}")]),
        "",
        "an empty change's branch goes"
    );
    // The change is in the task's output file too.
    let json: Value =
        serde_json::from_str(&read(&p.path(&format!(".output/w/task_{changed}.json")))).unwrap();
    assert_eq!(json["worktree"]["files"][0]["path"], "new.txt", "{json}");
    assert!(daemon.stop().success());
}

/// A persistent Claude worker keeps one worktree for its conversation: its tasks run in it one
/// after another, the conversation goes on, each task's own change is recorded, and the shared
/// checkout is untouched.
#[test]
fn a_persistent_claude_worker_keeps_one_worktree_and_its_conversation() {
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let p = Project::with_claude(
        &fake,
        "mode = \"persistent\"\nallowed_tools = [\"Bash\"]\nisolation = \"worktree\"\nrepo = \"repo\"",
    );
    let repo = repo(&p);
    let daemon = p.start();
    let first = p.submit("c", "[[bash echo hello > hello.txt && echo wrote]]");
    p.ok(&["wait", "--timeout", "120s", &first.to_string()]);
    assert_eq!(p.output(first), "ran: wrote");
    // (The fake answers one Bash call per conversation: a second task cannot ask for another.)
    let second = p.submit("c", "and now?");
    p.ok(&["wait", "--timeout", "120s", &second.to_string()]);

    let (a, b) = (worktree(&p, first), worktree(&p, second));
    assert_eq!(a["path"], b["path"], "one worktree for the worker");
    assert!(a["path"].as_str().unwrap().ends_with("worker-c"), "{a}");
    assert_eq!(a["branch"], "agentq/c");
    assert_eq!(files(&a), ["hello.txt"], "{a}");
    assert_eq!(b["stage"], "empty", "{b}");
    assert_eq!(
        b["base"], a["head"],
        "the second task is measured from where the first left the worktree"
    );
    let (count, _) = seen(&p.output(second));
    assert_eq!(count, 2, "one conversation: {}", p.output(second));
    assert_eq!(
        p.task(first)["session_id"],
        p.task(second)["session_id"],
        "same conversation"
    );
    assert!(
        !repo.join("hello.txt").exists(),
        "the checkout is untouched"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    // Its change merges like any other.
    p.ok(&["merge", &first.to_string()]);
    assert_eq!(read(&repo.join("hello.txt")), "hello\n");
    assert!(daemon.stop().success());
}

/// `commit = "never"`: what the agent left stays uncommitted in its worktree, listed on the task;
/// a merge is refused (it would leave that work behind) and the worktree kept; discard removes it.
#[test]
fn commit_never_keeps_the_work_uncommitted_and_merge_refuses_to_leave_it_behind() {
    let agent = r#"["sh", "-c", "p=$(cat); echo \"$p\" > new.txt; echo ok"]"#;
    let p = Project::new(&format!(
        "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {agent}\nisolation = \"worktree\"\nworktree = \"per-task\"\ncommit = \"never\"\nkeep = \"never\"\nrepo = \"repo\"\n"
    ));
    let repo = repo(&p);
    let daemon = p.start();
    let id = p.submit("w", "left");
    p.wait_all(&[id]);
    let wt = worktree(&p, id);
    assert_eq!(wt["stage"], "ready", "{wt}");
    assert_eq!(wt["uncommitted"], serde_json::json!(["new.txt"]), "{wt}");
    assert_eq!(
        wt["removed"], false,
        "keep = never does not remove uncommitted work: {wt}"
    );
    let path = wt["path"].as_str().unwrap().to_string();
    let out = p.run(&["merge", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not committed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(read(&Path::new(&path).join("new.txt")), "left\n");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    p.ok(&["discard", &id.to_string()]);
    assert!(!Path::new(&path).exists());
    assert!(daemon.stop().success());
}
