//! `agentq import pm2`, through the real binary, on the PM2 ecosystem files of the seeds
//! (claude-workers-guide.md), evaluated by the real `node`.
// Unix end-to-end tests; Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::Value;

/// The seed's ecosystem.config.js ("Step 5: Update PM2 Config"), as it is there, after the
/// `ROOT` it leaves to the reader.
const SEED_ECOSYSTEM: &str = r#"const path = require('path');
const ROOT = path.resolve(__dirname, 'project');

// ecosystem.config.js
module.exports = {
  apps: [
    {
      name: 'claude-wrapper-sentinela',
      namespace: 'WORKERS',
      script: `${ROOT}/workers/claude-wrapper/target/release/claude-wrapper.exe`,
      args: 'sentinela',
      cwd: ROOT,
      instances: 1,
      autorestart: true,
      interpreter: 'none'  // Native executable
    },
    {
      name: 'claude-wrapper-escrivao',
      namespace: 'WORKERS',
      script: `${ROOT}/workers/claude-wrapper/target/release/claude-wrapper.exe`,
      args: 'escrivao',
      cwd: ROOT,
      instances: 1,
      autorestart: true,
      interpreter: 'none'
    }
  ]
};
"#;

/// The seed's other PM2 settings ("Approach 7", "PM2 não reinicia após crash", "Resource
/// Limits") in one app, a Claude one, and a cluster PM2 would run four of.
const SEED_SETTINGS: &str = r#"const ROOT = __dirname;
module.exports = {
  apps: [
    {
      name: 'claude-worker-sentinela',
      script: 'scripts/pm2-wrapper.js',
      args: `${ROOT}/scripts/claude-loop-worker.sh sentinela`,
      env: {
        CLAUDE_CODE_GIT_BASH_PATH: 'D:\\Git\\usr\\bin\\bash.exe'  // PATH CORRETO
      },
      autorestart: true,
      max_restarts: 10,           // Allow 10 restarts
      min_uptime: '10s',          // Must run 10s to count as successful start
      restart_delay: 1000,        // 1s delay between restarts
      max_memory_restart: '100M', // Restart if exceeds 100MB
      kill_timeout: 5000          // 5s grace period before SIGKILL
    },
    {
      name: 'escrivao',
      script: 'claude',
      args: '-p --dangerously-skip-permissions --model opus --resume 1234',
      cwd: ROOT
    },
    {
      name: 'api',
      script: 'server.js',
      instances: 4,
      exec_mode: 'cluster',
      cron_restart: '0 3 * * *',
      watch: true
    }
  ]
};
"#;

/// A folder with `file` holding `text`, and no agentq.toml.
fn folder_with(file: &str, text: &str) -> Project {
    let p = Project::new("");
    std::fs::remove_file(p.path("agentq.toml")).unwrap();
    std::fs::write(p.path(file), text).unwrap();
    p
}

/// `agentq config show --json` of a project whose agentq.toml is `text`.
fn loaded(text: &str) -> Value {
    Project::new(text).json(&["config", "show"])
}

#[test]
fn the_seeds_ecosystem_becomes_workers_that_load_as_a_config() {
    let p = folder_with("ecosystem.config.js", SEED_ECOSYSTEM);
    let out = p.run(&["import", "pm2", "ecosystem.config.js"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(
        toml.starts_with("# Imported from ecosystem.config.js by `agentq import pm2`.\n[[worker]]\nname = \"claude-wrapper-sentinela\"\nagent = \"command\"\n"),
        "{toml}"
    );
    let said = text(&out.stderr);
    for app in ["claude-wrapper-sentinela", "claude-wrapper-escrivao"] {
        assert!(
            said.contains(&format!(
                "agentq import pm2: app {app}: namespace = \"WORKERS\": agentq's workers are named in one agentq.toml\n"
            )),
            "{said}"
        );
    }
    assert!(
        !said.contains("instances"),
        "one instance is what agentq runs: {said}"
    );
    assert!(
        said.contains("once per task, with the prompt on stdin"),
        "{said}"
    );

    let config = loaded(&toml);
    let root = p.path("project");
    let workers = config["worker"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let exe = root.join("workers/claude-wrapper/target/release/claude-wrapper.exe");
    for (w, arg) in workers.iter().zip(["sentinela", "escrivao"]) {
        assert_eq!(w["agent"], "command");
        assert_eq!(
            w["command"],
            serde_json::json!([exe.display().to_string(), arg]),
            "{w}"
        );
        assert_eq!(w["cwd"], root.display().to_string());
        assert_eq!(w["autorestart"], true);
    }
}

#[test]
fn the_seeds_restart_memory_and_claude_settings_are_carried_over_and_the_rest_listed() {
    let p = folder_with("ecosystem.config.js", SEED_SETTINGS);
    let out = p.run(&["import", "pm2", "ecosystem.config.js"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = loaded(&text(&out.stdout));
    let dir = p.dir.path().display().to_string();
    let sentinela = &config["worker"][0];
    assert_eq!(
        sentinela["command"],
        serde_json::json!([
            "node",
            format!("{dir}/scripts/pm2-wrapper.js"),
            format!("{dir}/scripts/claude-loop-worker.sh"),
            "sentinela"
        ])
    );
    assert_eq!(
        (
            &sentinela["max_memory"],
            &sentinela["kill_timeout"],
            &sentinela["min_uptime"],
            &sentinela["restart_delay"],
            &sentinela["max_restarts"],
        ),
        (
            &"100MiB".into(),
            &"5s".into(),
            &"10s".into(),
            &"1s".into(),
            &10.into()
        ),
        "{sentinela}"
    );
    assert_eq!(
        sentinela["env"]["CLAUDE_CODE_GIT_BASH_PATH"],
        r"D:\Git\usr\bin\bash.exe"
    );
    let escrivao = &config["worker"][1];
    assert_eq!(escrivao["agent"], "claude");
    assert_eq!(escrivao["model"], "opus");
    assert_eq!(escrivao["dangerously_skip_permissions"], true);
    assert_eq!(escrivao["session"], "resume");
    assert_eq!(config["worker"][2]["name"], "api");

    let said = text(&out.stderr);
    for line in [
        "app escrivao: claude's --resume: agentq keeps the worker's conversation itself",
        "app api: instances = 4: a worker runs one task at a time",
        "app api: exec_mode = \"cluster\": Node's cluster mode has no counterpart",
        "app api: cron_restart = \"0 3 * * *\": agentq restarts nothing on a schedule",
        "app api: watch = true: agentq restarts nothing when files change",
    ] {
        assert!(said.contains(line), "{line} not in:\n{said}");
    }
}

#[test]
fn write_adds_the_workers_to_agentq_toml_but_never_over_one_of_the_same_name() {
    let mine = "[[worker]]\nname = \"claude-wrapper-escrivao\"\nagent = \"command\"\ncommand = [\"cat\"]\n";
    let p = Project::new(mine);
    std::fs::write(p.path("ecosystem.config.js"), SEED_ECOSYSTEM).unwrap();
    let out = p.run(&["import", "pm2", "ecosystem.config.js", "--write"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = p.path("agentq.toml");
    assert_eq!(
        text(&out.stdout),
        format!("Added claude-wrapper-sentinela to {}\n", path.display())
    );
    assert!(
        text(&out.stderr).contains(&format!(
            "app claude-wrapper-escrivao: {} has a worker named claude-wrapper-escrivao already; not added",
            path.display()
        )),
        "{}",
        text(&out.stderr)
    );
    let written = read(&path);
    assert!(written.starts_with(mine), "{written}");
    let config = p.json(&["config", "show"]);
    let names: Vec<&str> = config["worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["claude-wrapper-escrivao", "claude-wrapper-sentinela"]
    );
    assert_eq!(config["worker"][0]["command"], serde_json::json!(["cat"]));

    // Again: nothing left to add, and the file as it was.
    let out = p.run(&["import", "pm2", "ecosystem.config.js", "--write"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing to add from ecosystem.config.js"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(read(&path), written);

    // Without an agentq.toml there is nowhere to write.
    let bare = folder_with("ecosystem.config.js", SEED_ECOSYSTEM);
    let out = bare.run(&["import", "pm2", "ecosystem.config.js", "--write"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("run `agentq init` first"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_json_ecosystem_needs_no_node_and_a_javascript_one_says_node_is_missing() {
    let p = folder_with(
        "ecosystem.json",
        r#"{"apps": [{"name": "w", "script": "/usr/bin/env", "args": ["true"]}]}"#,
    );
    std::fs::write(p.path("ecosystem.config.js"), SEED_ECOSYSTEM).unwrap();
    let no_node = p.path("empty-bin");
    std::fs::create_dir(&no_node).unwrap();
    let run = |file: &str| {
        p.cmd(&["import", "pm2", file])
            .env("PATH", &no_node)
            .output()
            .unwrap()
    };
    let out = run("ecosystem.json");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("command = [\"/usr/bin/env\", \"true\"]"),
        "{}",
        text(&out.stdout)
    );
    let out = run("ecosystem.config.js");
    assert_eq!(out.status.code(), Some(3));
    let said = text(&out.stderr);
    assert!(
        said.contains("node is not installed (not found on PATH); it is needed to read ecosystem.config.js, which is JavaScript: install Node.js"),
        "{said}"
    );
}

#[test]
fn a_file_that_is_no_ecosystem_is_refused_with_what_was_wrong() {
    let p = folder_with(
        "broken.config.js",
        "module.exports = { apps: [ { name: 'x', ",
    );
    std::fs::write(p.path("empty.config.js"), "module.exports = { other: 1 };").unwrap();
    std::fs::write(p.path("eco.yaml"), "apps: []\n").unwrap();
    for (args, says) in [
        (
            &["import", "pm2", "broken.config.js"][..],
            "broken.config.js: node could not evaluate it:\n",
        ),
        (
            &["import", "pm2", "empty.config.js"],
            "empty.config.js has no apps: a PM2 ecosystem file exports { apps: [",
        ),
        (
            &["import", "pm2", "missing.config.js"],
            "missing.config.js: no such file",
        ),
        (
            &["import", "pm2", "eco.yaml"],
            "a YAML ecosystem file is not read",
        ),
    ] {
        let out = p.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = p.run(&["import", "pm2", "broken.config.js"]);
    assert!(
        text(&out.stderr).contains("SyntaxError"),
        "{}",
        text(&out.stderr)
    );
}
