//! The text of each kind of service, pure functions of a [`Service`]: a systemd unit, a launchd
//! job, a Task Scheduler task, the environment file that goes with one; and, read back from such
//! a text, the folder it runs agentq in, or the variables it carries.

use std::path::Path;

use super::{Kind, RESTART_SEC, Service};

/// The systemd unit file for `s`, which reads its variables from `env_file` if it has one.
pub fn systemd_unit(s: &Service, env_file: Option<&Path>) -> String {
    let folder = s.root.display().to_string();
    let mut unit = format!(
        "# Written by `agentq service install`. Runs agentq for {folder}.\n\
         [Unit]\n\
         Description=agentq workers for {desc}\n",
        desc = specifiers(&folder),
    );
    if !s.user {
        // A user manager has no network-online.target; a system one should wait for the network.
        unit.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    unit.push_str("\n[Service]\nType=simple\n");
    if let Some(user) = &s.run_as {
        unit.push_str(&format!("User={user}\n"));
    }
    unit.push_str(&format!(
        "WorkingDirectory={dir}\n\
         ExecStart={exe} run --config {config}\n\
         Environment={path}\n\
         {env_file}\
         Restart=on-failure\n\
         RestartSec={RESTART_SEC}\n\
         # SIGTERM to the daemon alone: it lets running tasks finish for shutdown_grace, then stops\n\
         # its agents itself. What is left after TimeoutStopSec is killed.\n\
         KillMode=mixed\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec={stop}\n\
         # The service's cgroup is the daemon's to divide: each attempt gets a cgroup of its own,\n\
         # which nothing the agent starts can leave (`agentq doctor` says what is in force).\n\
         Delegate=yes\n\
         \n\
         [Install]\n\
         WantedBy={target}\n",
        dir = specifiers(&folder),
        exe = exec_word(&s.exe.display().to_string()),
        config = exec_word(&s.config.display().to_string()),
        path = exec_word(&format!("PATH={}", s.path_env)),
        env_file = env_file
            .map(|f| {
                format!(
                    "# {}, carried from the shell that installed it (readable by its owner only).\n\
                     EnvironmentFile={}\n",
                    s.env.names(),
                    specifiers(&f.display().to_string())
                )
            })
            .unwrap_or_default(),
        stop = s.stop_timeout.as_secs(),
        target = if s.user {
            "default.target"
        } else {
            "multi-user.target"
        },
    ));
    unit
}

/// `%` starts a specifier in most unit settings; `%%` is a literal one.
fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// One word of `ExecStart=` or `Environment=`: quoted when it has spaces or quotes in it.
fn exec_word(word: &str) -> String {
    let word = specifiers(word);
    if word
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word
    }
}

/// Text for an XML element or attribute.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// What [`xml`] escaped, back.
fn unxml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The launchd job (a property list) for `s`, labelled `label`.
pub fn launchd_plist(s: &Service, label: &str) -> String {
    let string = |t: &str| format!("<string>{}</string>", xml(t));
    let log = s
        .root
        .join(agentq_daemon::config::STATE_DIR)
        .join("launchd.log");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `agentq service install`. Runs agentq in its WorkingDirectory. -->
<plist version="1.0">
<dict>
  <key>Label</key>
  {label}
  <key>ProgramArguments</key>
  <array>
    {exe}
    <string>run</string>
    <string>--config</string>
    {config}
  </array>
  <key>WorkingDirectory</key>
  {root}
  <key>EnvironmentVariables</key>
  <dict>
    <key>PATH</key>
    {path}{carried}
  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>{RESTART_SEC}</integer>
  <key>ExitTimeOut</key>
  <integer>{stop}</integer>
  <key>StandardOutPath</key>
  {log}
  <key>StandardErrorPath</key>
  {log}
</dict>
</plist>
"#,
        label = string(label),
        exe = string(&s.exe.display().to_string()),
        config = string(&s.config.display().to_string()),
        root = string(&s.root.display().to_string()),
        path = string(&s.path_env),
        carried = s
            .env
            .0
            .iter()
            .map(|(k, v)| format!("\n    <key>{}</key>\n    {}", xml(k), string(v)))
            .collect::<String>(),
        stop = s.stop_timeout.as_secs(),
        log = string(&log.display().to_string()),
    )
}

/// How many times Task Scheduler tries again to start a task that failed to start: the most its
/// schema allows (an unsigned byte).
const TASK_RESTART_COUNT: u8 = u8::MAX;

/// The Task Scheduler task (schema 1.2, Vista and later) for `s`, run as `user` (`DOMAIN\name`;
/// `None`: as whoever registers it, started at anyone's logon), whose `service run` reads the
/// variables it carries from `env_file`, if it has one.
///
/// Its action is `agentq service run` (see [`super::supervise`]), in the project folder, with the
/// project's config; started at the user's logon with their interactive token, so no password is
/// stored (and so there is no boot trigger: one needs a stored password); never stopped for
/// running long, on batteries or at idle; one instance at a time; hidden from Task Scheduler's
/// default view; at normal priority (a task's default, 7, is below normal). Task Scheduler's own
/// restart covers a failure to start; `service run` starts the daemon again when it fails.
pub fn task_xml(s: &Service, user: Option<&str>, env_file: Option<&Path>) -> String {
    let folder = xml(&s.root.display().to_string());
    let user_id = user
        .map(|u| format!("\n      <UserId>{}</UserId>", xml(u)))
        .unwrap_or_default();
    let config = s.config.display().to_string();
    let mut arguments = ["service", "run", "--config", &config]
        .map(windows_arg)
        .join(" ");
    if let Some(env_file) = env_file {
        arguments.push_str(" --env-file ");
        arguments.push_str(&windows_arg(&env_file.display().to_string()));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<!-- Written by `agentq service install`. Runs agentq in its WorkingDirectory. -->
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>agentq workers for {folder}</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>{user_id}
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">{user_id}
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>true</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>5</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>{TASK_RESTART_COUNT}</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{exe}</Command>
      <Arguments>{arguments}</Arguments>
      <WorkingDirectory>{folder}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"#,
        exe = xml(&s.exe.display().to_string()),
        arguments = xml(&arguments),
    )
}

/// One argument of a Windows command line, as programs built on the C runtime (and Rust's std)
/// split it: quoted when it is empty or has a space, tab or quote in it; inside quotes, a quote
/// is escaped with a backslash and the backslashes right before a quote or the closing quote
/// are doubled.
pub fn windows_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_string();
    }
    let mut out = String::from('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => {
                backslashes += 1;
                continue;
            }
            '"' => out.push_str(&"\\".repeat(backslashes * 2 + 1)),
            _ => out.push_str(&"\\".repeat(backslashes)),
        }
        backslashes = 0;
        out.push(c);
    }
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push('"');
    out
}

/// The environment file of `s`: a line `KEY="value"` per variable it carries, the value in
/// double quotes with `\`, `"`, `` ` `` and `$` escaped by a backslash, as systemd reads an
/// `EnvironmentFile=` (and [`read_env_file`] reads it back, for the Windows task). Values with a
/// line break are refused before this ([`super::carried`]).
pub fn env_file_text(s: &Service) -> String {
    let mut text = format!(
        "# Written by `agentq service install`: the environment of agentq for {}.\n\
         # It holds secrets: keep it readable by its owner only.\n",
        s.root.display()
    );
    for (key, value) in &s.env.0 {
        let mut quoted = String::with_capacity(value.len() + 2);
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '`' | '$') {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        text.push_str(&format!("{key}=\"{quoted}\"\n"));
    }
    text
}

/// The variables of an environment file: `KEY=value` lines, the value bare (its ends trimmed), in
/// single quotes (as it is), or in double quotes (where a backslash escapes `\`, `"`, `` ` `` and
/// `$`, and is itself before any other character); empty lines and those starting with `#` or
/// `;` are skipped: as systemd reads them.
pub fn read_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=value", n + 1));
        };
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = inner.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(c @ ('\\' | '"' | '`' | '$')) => out.push(c),
                        Some(c) => out.extend(['\\', c]),
                        None => out.push('\\'),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => out.push(c),
                }
            }
            if !closed {
                return Err(format!("line {}: the value's quote is not closed", n + 1));
            }
            out
        } else if let Some(inner) = value.strip_prefix('\'') {
            match inner.split_once('\'') {
                Some((inner, _)) => inner.to_string(),
                None => return Err(format!("line {}: the value's quote is not closed", n + 1)),
            }
        } else {
            value.to_string()
        };
        vars.push((key.trim().to_string(), value));
    }
    Ok(vars)
}

/// The folder a service's text runs agentq in (its working directory), as written there; `None`
/// when it names none.
pub fn folder_of(kind: Kind, text: &str) -> Option<String> {
    match kind {
        Kind::Systemd => text
            .lines()
            .find_map(|l| l.strip_prefix("WorkingDirectory="))
            .map(|d| d.trim().replace("%%", "%")),
        Kind::Launchd => {
            let after = text.split("<key>WorkingDirectory</key>").nth(1)?;
            let value = after.trim_start().strip_prefix("<string>")?;
            Some(unxml(value.split("</string>").next()?))
        }
        Kind::Task => {
            let after = text.split("<WorkingDirectory>").nth(1)?;
            Some(unxml(after.split("</WorkingDirectory>").next()?.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::service;
    use super::*;

    #[test]
    fn the_user_unit_runs_agentq_for_the_folder_and_stops_gently() {
        let s = service(true);
        let name = s.name();
        assert!(name.starts_with("agentq-my-proj-"), "{name}");
        assert_eq!(name.len(), "agentq-my-proj-".len() + 8);
        let expected = [
            "# Written by `agentq service install`. Runs agentq for /home/ann/my proj.",
            "[Unit]",
            "Description=agentq workers for /home/ann/my proj",
            "",
            "[Service]",
            "Type=simple",
            "WorkingDirectory=/home/ann/my proj",
            "ExecStart=/usr/local/bin/agentq run --config \"/home/ann/my proj/agentq.toml\"",
            "Environment=PATH=/home/ann/.local/bin:/usr/bin:/bin",
            "Restart=on-failure",
            "RestartSec=5",
            "# SIGTERM to the daemon alone: it lets running tasks finish for shutdown_grace, then stops",
            "# its agents itself. What is left after TimeoutStopSec is killed.",
            "KillMode=mixed",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=45",
            "# The service's cgroup is the daemon's to divide: each attempt gets a cgroup of its own,",
            "# which nothing the agent starts can leave (`agentq doctor` says what is in force).",
            "Delegate=yes",
            "",
            "[Install]",
            "WantedBy=default.target",
        ];
        assert_eq!(systemd_unit(&s, None).lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn the_system_unit_waits_for_the_network_and_runs_as_the_folders_owner() {
        let unit = systemd_unit(&service(false), None);
        let lines: Vec<&str> = unit.lines().collect();
        assert_eq!(
            lines[3..5],
            ["Wants=network-online.target", "After=network-online.target"]
        );
        assert!(lines.contains(&"User=ann"), "{unit}");
        assert_eq!(lines.last(), Some(&"WantedBy=multi-user.target"));
    }

    /// Ann's service, carrying a key (with characters XML and systemd's quoting care about) and a
    /// database URL.
    fn carrying() -> Service {
        let mut s = service(true);
        s.env.0.insert(
            "ANTHROPIC_API_KEY".into(),
            r#"sk-<a&b> "q" $x `y` \z"#.into(),
        );
        s.env
            .0
            .insert("AGENTQ_DATABASE_URL".into(), "postgres://u:pw@db/q".into());
        s
    }

    #[test]
    fn the_environment_file_quotes_as_systemd_reads_it_and_reads_back() {
        let s = carrying();
        let text = env_file_text(&s);
        assert_eq!(
            text.lines().skip(2).collect::<Vec<_>>(),
            [
                r#"AGENTQ_DATABASE_URL="postgres://u:pw@db/q""#,
                r#"ANTHROPIC_API_KEY="sk-<a&b> \"q\" \$x \`y\` \\z""#,
            ]
        );
        assert!(
            text.starts_with("# Written by `agentq service install`"),
            "{text}"
        );
        let back: std::collections::BTreeMap<String, String> =
            read_env_file(&text).unwrap().into_iter().collect();
        assert_eq!(back, s.env.0);

        // Written by hand, as systemd takes it.
        let hand =
            "# mine\n; also a comment\n\nA = bare value  \nB='single $x \\n'\nC=\"a\\nb\"\nD=\n";
        assert_eq!(
            read_env_file(hand).unwrap(),
            [
                ("A".to_string(), "bare value".to_string()),
                ("B".into(), r"single $x \n".into()),
                ("C".into(), r"a\nb".into()),
                ("D".into(), String::new()),
            ]
        );
        for bad in ["NOEQUALS\n", "A=\"open\n", "A='open\n"] {
            let e = read_env_file(bad).unwrap_err();
            assert!(e.starts_with("line 1: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_unit_names_its_environment_file_and_no_value() {
        let s = carrying();
        let unit = systemd_unit(&s, Some(Path::new("/home/ann/.config/systemd/user/x.env")));
        let lines: Vec<&str> = unit.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("Environment=PATH="))
            .unwrap();
        assert_eq!(
            lines[at + 1..at + 3],
            [
                "# AGENTQ_DATABASE_URL, ANTHROPIC_API_KEY, carried from the shell that installed it (readable by its owner only).",
                "EnvironmentFile=/home/ann/.config/systemd/user/x.env",
            ]
        );
        assert!(!unit.contains("pw@db") && !unit.contains("sk-"), "{unit}");
        assert!(!systemd_unit(&s, None).contains("EnvironmentFile"));
    }

    #[test]
    fn a_launchd_job_holds_its_variables_and_a_task_names_its_file() {
        let plist = launchd_plist(&carrying(), "l");
        assert!(
            plist.contains(
                "<key>PATH</key>\n    <string>/home/ann/.local/bin:/usr/bin:/bin</string>\n    \
                 <key>AGENTQ_DATABASE_URL</key>\n    <string>postgres://u:pw@db/q</string>\n    \
                 <key>ANTHROPIC_API_KEY</key>\n    <string>sk-&lt;a&amp;b&gt; &quot;q&quot; $x `y` \\z</string>\n  </dict>"
            ),
            "{plist}"
        );
        let xml = task_xml(
            &windows_service(),
            None,
            Some(Path::new(r"C:\Users\ann\AppData\Local\agentq\tasks\x.env")),
        );
        assert!(
            xml.contains(r#"<Arguments>service run --config &quot;C:\Users\ann\Ærø &amp; co\agentq.toml&quot; --env-file C:\Users\ann\AppData\Local\agentq\tasks\x.env</Arguments>"#),
            "{xml}"
        );
    }

    #[test]
    fn names_differ_by_path_and_odd_characters_are_escaped() {
        let mut a = service(true);
        let mut b = service(true);
        b.root = "/srv/other/my proj".into();
        assert_ne!(a.name(), b.name());
        a.root = "/tmp/Ünïcode & 100%!".into();
        assert!(a.name().starts_with("agentq-n-code-100-"), "{}", a.name());
        let mut bare = service(true);
        bare.root = "/".into();
        assert!(
            bare.name().starts_with("agentq-project-"),
            "{}",
            bare.name()
        );

        a.path_env = "/a b:/c%d".into();
        let unit = systemd_unit(&a, None);
        assert!(unit.contains("Environment=\"PATH=/a b:/c%%d\"\n"), "{unit}");
        assert!(
            unit.contains("WorkingDirectory=/tmp/Ünïcode & 100%%!\n"),
            "{unit}"
        );
        assert_eq!(
            folder_of(Kind::Systemd, &unit).as_deref(),
            Some("/tmp/Ünïcode & 100%!")
        );
    }

    #[test]
    fn the_launchd_job_has_the_same_command_and_stop_time() {
        let plist = launchd_plist(&service(true), "com.agentq.x");
        for part in [
            "<string>com.agentq.x</string>",
            "<string>/usr/local/bin/agentq</string>\n    <string>run</string>\n    <string>--config</string>\n    <string>/home/ann/my proj/agentq.toml</string>",
            "<key>WorkingDirectory</key>\n  <string>/home/ann/my proj</string>",
            "<key>PATH</key>\n    <string>/home/ann/.local/bin:/usr/bin:/bin</string>",
            "<key>ExitTimeOut</key>\n  <integer>45</integer>",
            "<key>SuccessfulExit</key>\n    <false/>",
        ] {
            assert!(plist.contains(part), "{part} missing from:\n{plist}");
        }
        let log = std::path::Path::new("/home/ann/my proj")
            .join(".agentq")
            .join("launchd.log");
        assert!(plist.contains(&format!("<string>{}</string>", log.display())));
        assert_eq!(
            folder_of(Kind::Launchd, &plist).as_deref(),
            Some("/home/ann/my proj")
        );
        let mut odd = service(true);
        odd.path_env = "<&>".into();
        // A folder with "--" in its name: it is not in the comment, where XML forbids "--".
        odd.root = "/tmp/a--b & 'c'".into();
        let plist = launchd_plist(&odd, "l");
        assert!(plist.contains("<string>&lt;&amp;&gt;</string>"), "{plist}");
        assert!(
            !plist
                .lines()
                .any(|l| l.starts_with("<!--") && l.contains("a--b")),
            "{plist}"
        );
        assert_eq!(
            folder_of(Kind::Launchd, &plist).as_deref(),
            Some("/tmp/a--b & 'c'")
        );
    }

    /// A service as it is on Windows: drive paths, a space, an ampersand and a non-ASCII letter.
    fn windows_service() -> Service {
        Service {
            exe: r"C:\Program Files\agentq\agentq.exe".into(),
            config: r"C:\Users\ann\Ærø & co\agentq.toml".into(),
            root: r"C:\Users\ann\Ærø & co".into(),
            path_env: r"C:\Windows\system32;C:\Users\ann\AppData\Roaming\npm".into(),
            stop_timeout: std::time::Duration::from_secs(45),
            user: true,
            run_as: None,
            env: Default::default(),
        }
    }

    #[test]
    fn the_task_runs_agentq_at_logon_as_the_user_and_is_never_stopped_for_running_long() {
        let xml = task_xml(&windows_service(), Some(r"DESKTOP-1\ann"), None);
        let expected = r#"<?xml version="1.0" encoding="UTF-16"?>
<!-- Written by `agentq service install`. Runs agentq in its WorkingDirectory. -->
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>agentq workers for C:\Users\ann\Ærø &amp; co</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>DESKTOP-1\ann</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>DESKTOP-1\ann</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>true</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>5</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>255</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>C:\Program Files\agentq\agentq.exe</Command>
      <Arguments>service run --config &quot;C:\Users\ann\Ærø &amp; co\agentq.toml&quot;</Arguments>
      <WorkingDirectory>C:\Users\ann\Ærø &amp; co</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"#;
        assert_eq!(xml, expected);
        assert_eq!(
            folder_of(Kind::Task, &xml).as_deref(),
            Some(r"C:\Users\ann\Ærø & co")
        );
    }

    #[test]
    fn without_a_user_the_task_names_none_and_every_path_is_escaped() {
        let mut s = windows_service();
        s.root = r"C:\a<b>'c'".into();
        s.exe = r"C:\x&y\agentq.exe".into();
        let xml = task_xml(&s, None, None);
        assert!(!xml.contains("<UserId>"), "{xml}");
        assert!(
            xml.contains("<LogonTrigger>\n      <Enabled>true</Enabled>\n    </LogonTrigger>"),
            "{xml}"
        );
        assert!(
            xml.contains("<Principal id=\"Author\">\n      <LogonType>"),
            "{xml}"
        );
        assert!(
            xml.contains("<WorkingDirectory>C:\\a&lt;b&gt;&apos;c&apos;</WorkingDirectory>"),
            "{xml}"
        );
        assert!(
            xml.contains("<Command>C:\\x&amp;y\\agentq.exe</Command>"),
            "{xml}"
        );
        assert_eq!(folder_of(Kind::Task, &xml).as_deref(), Some(r"C:\a<b>'c'"));
    }

    #[test]
    fn windows_arguments_are_quoted_as_the_c_runtime_splits_them() {
        for (arg, quoted) in [
            ("plain", "plain"),
            (r"C:\no\space.toml", r"C:\no\space.toml"),
            ("", r#""""#),
            (r"C:\my proj\agentq.toml", r#""C:\my proj\agentq.toml""#),
            (r"C:\ends with\", r#""C:\ends with\\""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r#"a\"b c"#, r#""a\\\"b c""#),
        ] {
            assert_eq!(windows_arg(arg), quoted, "{arg}");
        }
    }
}
