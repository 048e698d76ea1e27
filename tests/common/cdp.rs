//! A small synchronous client of the Chrome DevTools Protocol: enough to drive a page in headless
//! Chromium as a person would (navigate, type, click) and read what it shows.
//!
//! Chromium is started with `--remote-debugging-pipe`: it reads commands on fd 3 and writes
//! answers and events on fd 4, each one JSON message ended by a NUL byte, so no port is opened and
//! no other process can reach it. A thread reads fd 4 into a channel, so that every wait for an
//! answer has a deadline. One page is opened and attached in flat mode (`sessionId` on each
//! message). Chromium runs in a process group of its own, killed whole when the [`Browser`]
//! drops, a failing assertion included.
//!
//! A dialog (`alert`) would block the page's scripts, and every command after it: it is answered
//! at once, and kept in [`Browser::problems`] with the page's uncaught exceptions, for the test to
//! look at.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long Chromium may take to answer one command.
const ANSWER: Duration = Duration::from_secs(60);

/// How long [`Browser::click`] waits for its element to be there to be clicked.
const CLICKABLE: Duration = Duration::from_secs(60);

pub struct Browser {
    chromium: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Where screenshots and Chromium's stderr (`chromium.log`) are kept.
    artifacts: PathBuf,
    /// What the page did that a person would see as a failure: dialogs (answered at once) and
    /// uncaught exceptions, in order.
    pub problems: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `bin` headless with a new profile and opens an empty page.
    pub fn launch(bin: &Path, artifacts: &Path) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("agentq-chromium")
            .tempdir()
            .unwrap();
        let log = artifacts.join("chromium.log");
        // What a failed wait of an earlier run left would be taken for this run's.
        let _ = std::fs::remove_file(artifacts.join("timeout.png"));
        // Chromium reads `to_chromium` and writes `from_chromium`.
        let (to_chromium, commands) = pipe();
        let (messages, from_chromium) = pipe();
        let (fd3, fd4) = (to_chromium.as_raw_fd(), from_chromium.as_raw_fd());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-sync",
            "--disable-component-update",
            "--disable-background-networking",
            // A test may run beside others on a busy machine: no timer of the page is slowed.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1280,1000",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, prctl). Both pipe ends
        // are above fd 4, so moving one into place cannot close the other.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 leaves the copy open across exec; the originals are close-on-exec.
                if libc::dup2(fd3, 3) < 0 || libc::dup2(fd4, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Should the test process be killed, Chromium goes with it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let chromium = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        // Chromium's ends are Chromium's alone now: its exit must close the pipe it writes.
        drop((to_chromium, from_chromium));

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(File::from(messages));
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(_) if message.pop() == Some(0) => {}
                    _ => return, // the pipe closed (Chromium exited), maybe mid-message
                }
                let value = serde_json::from_slice(&message).unwrap_or_else(
                    |e| json!({ "unreadable": format!("{e}: {}", String::from_utf8_lossy(&message)) }),
                );
                if tx.send(value).is_err() {
                    return;
                }
            }
        });

        let mut browser = Browser {
            chromium,
            commands: File::from(commands),
            messages: rx,
            next_id: 0,
            session: String::new(),
            artifacts: artifacts.to_path_buf(),
            problems: Vec::new(),
            _profile: profile,
        };
        let target = browser.browser_call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        // A headless page has no focus of its own; a text field must take the focus to be typed in.
        browser.call(
            "Emulation.setFocusEmulationEnabled",
            json!({ "enabled": true }),
        );
        browser
    }

    /// Sends a command to the page; its result, or a failed test.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// Sends a command to the browser itself.
    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.command(None, method, params)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// Sends a command and waits (bounded) for its answer: `Err` if Chromium answers with an
    /// error, a failed test if it does not answer.
    fn command(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.post(session, method, params);
        let deadline = Instant::now() + ANSWER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.messages.recv_timeout(left) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no answer to {method} within {ANSWER:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => self.fail(&format!(
                    "Chromium closed its pipe before answering {method}"
                )),
            };
            if message["id"].as_u64() == Some(id) {
                return match message.get("error") {
                    Some(error) => Err(format!("{method}: {error}")),
                    None => Ok(message["result"].clone()),
                };
            }
            self.event(&message);
        }
    }

    /// Writes a command; its id.
    fn post(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            self.fail(&format!("sending {method}: {e}"));
        }
        self.next_id
    }

    fn event(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Page.javascriptDialogOpening") => {
                self.problems.push(format!(
                    "{} dialog: {}",
                    params["type"].as_str().unwrap_or("a"),
                    params["message"].as_str().unwrap_or("")
                ));
                // Not waiting for the answer: this may be inside another command's wait.
                let session = message["sessionId"].as_str().map(str::to_string);
                self.post(
                    session.as_deref(),
                    "Page.handleJavaScriptDialog",
                    json!({ "accept": true }),
                );
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let what = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("?");
                self.problems.push(format!("uncaught: {what}"));
            }
            _ => {}
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise); its value, or the exception it
    /// threw.
    pub fn try_evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let answer = self.command(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            let what = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("?");
            return Err(format!("{expression}: {what}"));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Evaluates `expression` in the page; its value.
    pub fn evaluate(&mut self, expression: &str) -> Value {
        self.try_evaluate(expression)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// Polls `expression` until its value is truthy (not null, false, 0 or ""), and returns it;
    /// fails the test after `limit`. An evaluation that throws (say, the page is being replaced)
    /// counts as not yet.
    pub fn wait_for(&mut self, limit: Duration, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let last = self.try_evaluate(expression);
            if let Ok(value) = &last
                && truthy(value)
            {
                return value.clone();
            }
            if Instant::now() >= deadline {
                let _ = self.shoot("timeout.png");
                let page = self
                    .try_evaluate("document.body ? document.body.innerText : ''")
                    .unwrap_or_default();
                self.fail(&format!(
                    "timed out after {limit:?} waiting for {what} ({expression} was {last:?}); \
                     the page shows (timeout.png):\n{}",
                    page.as_str().unwrap_or("")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Opens `url` as a new document, even when it differs from the page's only by its
    /// #fragment (which alone would not reload the page).
    pub fn goto(&mut self, url: &str) {
        for url in ["about:blank", url] {
            let done = self.call("Page.navigate", json!({ "url": url }));
            if let Some(error) = done["errorText"].as_str() {
                self.fail(&format!("opening {url}: {error}"));
            }
        }
    }

    /// Clicks the middle of the element `selector` finds, with the mouse, as a person would:
    /// waits (bounded) until it is there, visible and not covered by another.
    pub fn click(&mut self, selector: &str) {
        let find = format!(
            r#"(() => {{
                const e = document.querySelector({selector});
                if (!e) return null;
                e.scrollIntoView({{ block: "center" }});
                const r = e.getBoundingClientRect();
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                return r.width > 0 && r.height > 0 && hit && e.contains(hit) ? {{ x, y }} : null;
            }})()"#,
            selector = json!(selector)
        );
        let at = self.wait_for(CLICKABLE, &format!("{selector} to be clickable"), &find);
        let (x, y) = (at["x"].clone(), at["y"].clone());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Types `text` into the element that has the focus, as a keyboard would.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Saves a PNG of the whole page as `name` among the artifacts; its path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        self.shoot(name).unwrap_or_else(|e| self.fail(&e))
    }

    fn shoot(&mut self, name: &str) -> Result<PathBuf, String> {
        let session = self.session.clone();
        let shot = self.command(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )?;
        let png = base64(shot["data"].as_str().unwrap_or(""));
        let path = self.artifacts.join(name);
        std::fs::write(&path, png).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Fails the test, with what Chromium wrote on stderr.
    fn fail(&self, what: &str) -> ! {
        let log = self.artifacts.join("chromium.log");
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = {
            let lines: Vec<&str> = stderr.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        panic!(
            "{what}\nthe page's problems: {:?}\nChromium's stderr ({}):\n{tail}",
            self.problems,
            log.display()
        );
    }
}

impl Drop for Browser {
    /// Kills the whole group: the browser and the renderer, GPU and utility processes it started.
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.chromium.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.chromium.wait();
    }
}

/// A pipe whose two ends are close-on-exec and above fd 4: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors, which become owned here.
    let (r, w) = unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    (above_4(r), above_4(w))
}

fn above_4(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (the lowest free one from 10), owned here.
    unsafe {
        let copy = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
        assert!(copy >= 10, "{}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(copy)
    }
}

/// JavaScript's truthiness, for a value returned by value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Decodes standard base64 (screenshots come as such; not worth a dependency).
fn base64(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let six = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => panic!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
