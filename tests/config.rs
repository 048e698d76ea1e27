//! `agentq config schema` and `agentq config show`, through the real binary: the schema is checked
//! with a validator of its own (the jsonschema crate) against the configs agentq writes and
//! documents, and it refuses what the parser refuses.
// Unix end-to-end tests; Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::Value;

/// The schema `agentq config schema` prints, compiled.
fn schema() -> (Value, jsonschema::Validator) {
    let p = Project::new("");
    std::fs::remove_file(p.path("agentq.toml")).unwrap();
    let schema: Value = serde_json::from_str(&p.ok(&["config", "schema"])).unwrap();
    jsonschema::meta::validate(&schema).expect("a valid draft 2020-12 schema");
    let validator = jsonschema::validator_for(&schema).unwrap();
    (schema, validator)
}

/// A TOML text as the JSON the schema describes.
fn as_json(toml_text: &str) -> Value {
    let value: toml::Value = toml::from_str(toml_text).unwrap();
    serde_json::to_value(value).unwrap()
}

/// What the validator finds wrong with `toml_text`, one line each.
fn schema_errors(validator: &jsonschema::Validator, toml_text: &str) -> Vec<String> {
    let instance = as_json(toml_text);
    validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The ```toml blocks of README.md.
fn readme_configs() -> Vec<String> {
    let readme = include_str!("../README.md");
    readme
        .split("```toml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_string())
        .collect()
}

#[test]
fn the_schema_describes_every_section_and_key_from_the_configs_own_types() {
    let (schema, _) = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    let sections: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    for section in [
        "defaults",
        "intake",
        "daemon",
        "classify",
        "http",
        "store",
        "retention",
        "pool",
        "class",
        "worker",
    ] {
        assert!(sections.iter().any(|s| *s == section), "{sections:?}");
    }
    let worker = &schema["$defs"]["Worker"];
    assert_eq!(worker["additionalProperties"], false);
    // Each key is described by its doc comment, the agents' own keys too.
    for key in [
        "timeout",
        "command",
        "claude_bin",
        "permission_mode",
        "sandbox",
        "approval_mode",
        "trust_workspace",
    ] {
        let description = worker["properties"][key]["description"].as_str();
        assert!(description.is_some_and(|d| d.len() > 10), "{key}: {worker}");
    }
    assert_eq!(
        worker["properties"]["sandbox"]["enum"],
        serde_json::json!(["read-only", "workspace-write", "danger-full-access"])
    );
    assert_eq!(
        worker["properties"]["agent"]["enum"],
        serde_json::json!(["claude", "codex", "gemini", "command"])
    );
}

#[test]
fn the_init_config_and_the_readmes_examples_are_valid() {
    let (_, validator) = schema();
    let p = Project::new("");
    std::fs::remove_file(p.path("agentq.toml")).unwrap();
    p.ok(&["init"]);
    let init = read(&p.path("agentq.toml"));
    assert_eq!(schema_errors(&validator, &init), Vec::<String>::new());

    let configs = readme_configs();
    assert!(configs.len() >= 3, "{configs:?}");
    for (i, config) in configs.iter().enumerate() {
        assert_eq!(
            schema_errors(&validator, config),
            Vec::<String>::new(),
            "README's toml block {i}:\n{config}"
        );
        // And agentq reads it as well.
        std::fs::write(p.path("agentq.toml"), config).unwrap();
        p.ok(&["config", "show"]);
    }
}

#[test]
fn what_the_parser_refuses_the_schema_refuses() {
    let (_, validator) = schema();
    let worker = "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = [\"cat\"]\n";
    assert_eq!(schema_errors(&validator, worker), Vec::<String>::new());
    // Each with what agentq's message names.
    for (config, named) in [
        // An unknown key, in a section and in a worker.
        (
            format!("[defaults]\ntimeuot = \"10m\"\n{worker}"),
            "timeuot",
        ),
        (format!("{worker}colour = \"blue\"\n"), "colour"),
        ("[sever]\nlisten = 1\n".to_string(), "sever"),
        // A key of another agent's: Codex's on a Claude worker (the default agent), Claude's on
        // a command worker, a command on a Gemini worker.
        (
            "[[worker]]\nname = \"c\"\nsandbox = \"read-only\"\n".to_string(),
            "sandbox",
        ),
        (
            format!("{worker}permission_mode = \"plan\"\n"),
            "permission_mode",
        ),
        (
            "[[worker]]\nname = \"g\"\nagent = \"gemini\"\ncommand = [\"gemini\"]\n".to_string(),
            "command",
        ),
        // Keys [pool] has not, and one only [pool] has.
        ("[pool]\nname = \"p\"\n".to_string(), "name"),
        ("[pool]\nautorestart = false\n".to_string(), "autorestart"),
        (format!("{worker}max_workers = 2\n"), "max_workers"),
        // A word that is not one of the setting's.
        (
            "[[worker]]\nname = \"x\"\nagent = \"codex\"\nsandbox = \"open\"\n".to_string(),
            "sandbox",
        ),
        (format!("{worker}timeout = true\n"), "expected a duration"),
    ] {
        let errors = schema_errors(&validator, &config);
        assert!(!errors.is_empty(), "the schema let through:\n{config}");
        let p = Project::new(&config);
        let out = p.run(&["config", "show"]);
        assert_eq!(out.status.code(), Some(2), "agentq read:\n{config}");
        let said = text(&out.stderr);
        assert!(
            said.contains("agentq.toml:") && said.contains(named),
            "{config}\n{said}"
        );
    }
}

#[test]
fn config_show_fills_in_every_default_and_loads_back_as_the_same_config() {
    let p = Project::new(
        "[defaults]\ntimeout = \"20m\"\nmax_memory = \"2GiB\"\n\
         [[worker]]\nname = \"a\"\ncommand = [\"cat\"]\nkill_timeout = \"7s\"\n\
         [[worker]]\nname = \"c\"\nagent = \"claude\"\nmode = \"persistent\"\n",
    );
    let shown = p.ok(&["config", "show"]);
    assert!(
        shown.starts_with(&format!(
            "# The effective configuration of {}: every setting",
            p.path("agentq.toml").display()
        )),
        "{shown}"
    );
    let json = p.json(&["config", "show"]);
    let a = &json["worker"][0];
    assert_eq!(
        (&a["timeout"], &a["kill_timeout"], &a["max_memory"]),
        (&"20m".into(), &"7s".into(), &"2GiB".into()),
        "{a}"
    );
    assert_eq!(a["backoff"], "5s");
    assert_eq!(a["max_attempts"], 3);
    assert_eq!(a["restart_delay"], "1s");
    assert_eq!(a["route"], "worker");
    let c = &json["worker"][1];
    assert_eq!(
        (&c["agent"], &c["mode"]),
        (&"claude".into(), &"persistent".into())
    );
    assert_eq!(c["session"], "resume");
    assert_eq!(c["timeout"], "20m");
    assert_eq!(json["pool"]["max_memory"], "2GiB");
    assert_eq!(json["http"]["max_connections"], 256);
    assert_eq!(json["intake"]["settle"], "200ms");

    // The effective config is a config: the schema takes it, and agentq reads it as the same.
    let (_, validator) = schema();
    assert_eq!(
        validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    let again = Project::new(&shown);
    assert_eq!(again.json(&["config", "show"]), json, "{shown}");
}

#[test]
fn config_show_hides_secrets() {
    let p = Project::new(
        "[store]\nurl = \"postgres://agentq:s3cret-pw@db.example:5432/queue\"\n\
         [[worker]]\nname = \"c\"\n[worker.env]\nANTHROPIC_API_KEY = \"sk-ant-secret\"\nLANG = \"C\"\n",
    );
    for args in [&["config", "show"][..], &["config", "show", "--json"]] {
        let out = p.ok(args);
        assert!(!out.contains("s3cret-pw"), "{out}");
        assert!(!out.contains("sk-ant-secret"), "{out}");
        assert!(
            out.contains("postgres://agentq:***@db.example:5432/queue"),
            "{out}"
        );
        assert!(out.contains("\"C\""), "{out}");
    }
    // The environment's URL wins over the file's, and is hidden as well.
    let out = p
        .cmd(&["config", "show"])
        .env(
            "AGENTQ_DATABASE_URL",
            "postgres://other:pw-from-env@elsewhere/q",
        )
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!said.contains("pw-from-env"), "{said}");
    assert!(said.contains("postgres://other:***@elsewhere"), "{said}");
    assert!(said.contains("AGENTQ_DATABASE_URL"), "{said}");
}

#[test]
fn config_show_without_a_config_says_how_to_make_one() {
    let p = Project::new("");
    std::fs::remove_file(p.path("agentq.toml")).unwrap();
    let out = p.run(&["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("agentq init"),
        "{}",
        text(&out.stderr)
    );
}
