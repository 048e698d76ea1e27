//! `agentq-test-agent`: a stand-in for a coding-agent CLI that misbehaves on request, so the
//! tests can spawn it as a worker's command (`env!("CARGO_BIN_EXE_agentq-test-agent")`).
//!
//! It reads its whole stdin (the prompt) to EOF first, then obeys the directives written in the
//! prompt as `[[name args]]`, in the order they appear. The text outside directives is the
//! *prompt text*; the *result* is the line `done: <prompt text, trimmed>`. With no directive it
//! prints the result and exits 0. All directives are checked before any is run: an unknown
//! directive or a bad argument prints `agentq-test-agent: ...` to stderr and exits 2 at once.
//!
//! Always, whatever the prompt: SIGPIPE has its default action (writing to a closed pipe ends
//! the process like a normal Unix tool, status "killed by SIGPIPE"), and if `AGENTQ_TEST_PIDS`
//! names a file, the agent appends a line with its pid to it on start (grandchildren too).
//!
//! Directives (MS and EVERY are milliseconds, MB is MiB, N a non-negative integer):
//! - `[[sleep MS]]`: sleep.
//! - `[[tick MS EVERY]]`: for MS, print `tick 1`, `tick 2`, ... to stdout every EVERY (flushed):
//!   busy, not hung.
//! - `[[hang]]`: sleep forever.
//! - `[[ignore-term]]`: ignore SIGTERM from now on.
//! - `[[stop-on-term]]`: from now on SIGTERM prints `got TERM` to stderr and exits 143.
//! - `[[grandchildren N]]`: start N copies of itself as `agentq-test-agent --grandchild`; each
//!   ignores SIGTERM, appends its pid to `AGENTQ_TEST_PIDS` and sleeps forever. They inherit
//!   stdout and stderr (so they hold the worker's pipes open), stay in the process group, and
//!   are not waited for.
//! - `[[escape]]`: start one grandchild (as `[[grandchildren 1]]`) the way a daemonising tool
//!   gets out of its parent's reach: in a process group of its own on Unix; with
//!   `CREATE_BREAKAWAY_FROM_JOB` on Windows. Prints `escaped: <pid>` or `escape refused: <error>`
//!   to stdout and goes on.
//! - `[[alloc MB]]`: allocate MB and touch every page, keeping it for the rest of the run.
//! - `[[grow MB EVERY]]`: forever, allocate and touch MB more every EVERY, keeping all of it.
//! - `[[crash SIGNAL]]`: flush, restore SIGNAL's default action and raise it. SIGNAL is a name
//!   with or without `SIG` (`SEGV`, `SIGKILL`, `abrt`) or a number. If the process survives (a
//!   signal whose default is to ignore, or STOP then CONT), it goes on with the next directive.
//! - `[[exit N]]`: flush and exit with code N (0..=255) at once; the result is not printed.
//! - `[[garbage N]]`: write N bytes of invalid UTF-8 to stdout (0x80..=0xFF, 0x00, repeating).
//! - `[[huge N]]`: write N bytes of `x` to stdout (no newline).
//! - `[[stderr N]]`: write N bytes of `e` and then a newline to stderr.
//! - `[[say TEXT]]`: print TEXT (trimmed) and a newline to stdout.
//! - `[[result]]`: print the result now (again, if it was printed before).
//! - `[[claude-json]]`: print every result as one JSON line shaped like `claude -p
//!   --output-format json` prints it. It applies to the whole run wherever it is written. The
//!   `session_id` is the value of `--session-id` or `--resume` in argv (`--x=V` or `--x V`),
//!   else `00000000-0000-4000-8000-000000000000`.
//! - `[[close-stdout]]`: flush and let go of stdout; the process runs on without it.
//! - `[[linger MS]]`: print the result now, stay alive MS with stdout still open, then exit 0
//!   without printing it again. `[[linger]]` lingers forever.
//!
//! After the last directive the result is printed unless `[[result]]` already printed it, and
//! the agent exits 0.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::process::{self, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use sys::Signal;

const PIDS_ENV: &str = "AGENTQ_TEST_PIDS";
const GRANDCHILD_ARG: &str = "--grandchild";
const DEFAULT_SESSION_ID: &str = "00000000-0000-4000-8000-000000000000";
const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;
/// Writes of `huge` and `garbage` go out in pieces this big, so a 50 MB answer needs no 50 MB
/// buffer.
const CHUNK: usize = 64 * 1024;

enum Directive {
    Sleep(u64),
    Tick { millis: u64, every: u64 },
    Hang,
    IgnoreTerm,
    StopOnTerm,
    Grandchildren(u32),
    Escape,
    Alloc(usize),
    Grow { mib: usize, every: u64 },
    Crash(Signal),
    Exit(i32),
    Garbage(usize),
    Huge(usize),
    Stderr(usize),
    Say(String),
    Result,
    ClaudeJson,
    CloseStdout,
    Linger(Option<u64>),
}

fn main() {
    // Rust starts every program with SIGPIPE ignored, which turns a closed pipe into an error
    // on each write; a real agent CLI is simply killed by it. Grandchildren inherit this
    // across exec, so it is set before anything is started.
    agentq_platform::signals::default_sigpipe();
    record_pid();

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(GRANDCHILD_ARG) {
        run_grandchild();
    }

    let mut input = Vec::new();
    if let Err(err) = io::stdin().read_to_end(&mut input) {
        fail(&format!("cannot read the prompt from stdin: {err}"));
    }
    let prompt = String::from_utf8_lossy(&input);
    let (prompt_text, directives) = parse_prompt(&prompt).unwrap_or_else(|msg| fail(&msg));

    let claude_json = directives
        .iter()
        .any(|d| matches!(d, Directive::ClaudeJson));
    let result = if claude_json {
        claude_json_result(&prompt_text, session_id(&args))
    } else {
        format!("done: {prompt_text}")
    };
    run(&directives, &result);
}

/// Obeys the directives in order, then prints the result unless that already happened.
fn run(directives: &[Directive], result: &str) -> ! {
    // Memory from `alloc` must stay resident until the process ends, so it is kept here.
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut result_printed = false;
    for directive in directives {
        match directive {
            Directive::Sleep(millis) => thread::sleep(Duration::from_millis(*millis)),
            Directive::Tick { millis, every } => tick(*millis, *every),
            Directive::Hang => sleep_forever(),
            Directive::IgnoreTerm => sys::ignore_term(),
            Directive::StopOnTerm => sys::stop_on_term(),
            Directive::Grandchildren(count) => spawn_grandchildren(*count),
            Directive::Escape => escape(),
            Directive::Alloc(mib) => held.push(touched_allocation(*mib)),
            Directive::Grow { mib, every } => loop {
                held.push(touched_allocation(*mib));
                thread::sleep(Duration::from_millis(*every));
            },
            Directive::Crash(signal) => crash(*signal),
            Directive::Exit(code) => {
                flush_all();
                process::exit(*code);
            }
            Directive::Garbage(len) => {
                let cycle: Vec<u8> = (0x80..=0xFF).chain([0x00]).collect();
                let chunk: Vec<u8> = cycle.iter().copied().cycle().take(CHUNK).collect();
                // CHUNK is not a multiple of the cycle, so each piece must start where the
                // previous one left off for the pattern to run on unbroken.
                let mut written = 0;
                while written < *len {
                    let offset = written % cycle.len();
                    let piece = (*len - written).min(CHUNK - offset);
                    write_stdout(&chunk[offset..offset + piece]);
                    written += piece;
                }
                flush_stdout();
            }
            Directive::Huge(len) => {
                let chunk = [b'x'; CHUNK];
                let mut left = *len;
                while left > 0 {
                    let piece = left.min(CHUNK);
                    write_stdout(&chunk[..piece]);
                    left -= piece;
                }
                flush_stdout();
            }
            Directive::Stderr(len) => {
                let mut text = vec![b'e'; *len];
                text.push(b'\n');
                let _ = io::stderr().write_all(&text);
            }
            Directive::Say(text) => print_line(text),
            Directive::Result => {
                print_line(result);
                result_printed = true;
            }
            Directive::ClaudeJson => {}
            Directive::CloseStdout => close_stdout(),
            Directive::Linger(millis) => {
                print_line(result);
                match millis {
                    Some(millis) => thread::sleep(Duration::from_millis(*millis)),
                    None => sleep_forever(),
                }
                flush_all();
                process::exit(0);
            }
        }
    }
    black_box(&held);
    if !result_printed {
        print_line(result);
    }
    flush_all();
    process::exit(0);
}

/// Splits the prompt into its text and its directives. Each `]]` closes the nearest `[[`
/// before it; brackets that close nothing are text.
fn parse_prompt(prompt: &str) -> Result<(String, Vec<Directive>), String> {
    let mut text = String::new();
    let mut directives = Vec::new();
    let mut rest = prompt;
    while let Some(close) = rest.find("]]") {
        match rest[..close].rfind("[[") {
            Some(open) => {
                text.push_str(&rest[..open]);
                directives.push(parse_directive(&rest[open + 2..close])?);
            }
            None => text.push_str(&rest[..close + 2]),
        }
        rest = &rest[close + 2..];
    }
    text.push_str(rest);
    Ok((text.trim().to_string(), directives))
}

fn parse_directive(body: &str) -> Result<Directive, String> {
    let body = body.trim();
    let (name, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let rest = rest.trim();
    let args: Vec<&str> = rest.split_whitespace().collect();
    let bad = |why: &str| format!("bad directive [[{body}]]: {why}");
    let number = |index: usize, what: &str| -> Result<u64, String> {
        let arg = args
            .get(index)
            .ok_or_else(|| bad(&format!("missing {what}")))?;
        arg.parse::<u64>().map_err(|_| {
            bad(&format!(
                "{what} must be a non-negative integer, not {arg:?}"
            ))
        })
    };
    let expect_args = |count: usize| -> Result<(), String> {
        if args.len() > count {
            Err(bad(&format!(
                "expected {count} argument(s), got {}",
                args.len()
            )))
        } else {
            Ok(())
        }
    };
    let size = |value: u64| usize::try_from(value).map_err(|_| bad("size too large"));
    let directive = match name {
        "sleep" => {
            expect_args(1)?;
            Directive::Sleep(number(0, "MS")?)
        }
        "tick" => {
            expect_args(2)?;
            let millis = number(0, "MS")?;
            let every = number(1, "EVERY")?;
            if every == 0 {
                return Err(bad("EVERY must be at least 1"));
            }
            Directive::Tick { millis, every }
        }
        "hang" => {
            expect_args(0)?;
            Directive::Hang
        }
        "ignore-term" => {
            expect_args(0)?;
            Directive::IgnoreTerm
        }
        "stop-on-term" => {
            expect_args(0)?;
            Directive::StopOnTerm
        }
        "escape" => {
            expect_args(0)?;
            Directive::Escape
        }
        "grandchildren" => {
            expect_args(1)?;
            let count = number(0, "N")?;
            Directive::Grandchildren(u32::try_from(count).map_err(|_| bad("N too large"))?)
        }
        "alloc" => {
            expect_args(1)?;
            Directive::Alloc(size(number(0, "MB")?)?)
        }
        "grow" => {
            expect_args(2)?;
            let mib = size(number(0, "MB")?)?;
            let every = number(1, "EVERY")?;
            Directive::Grow { mib, every }
        }
        "crash" => {
            expect_args(1)?;
            let arg = args.first().ok_or_else(|| bad("missing SIGNAL"))?;
            Directive::Crash(parse_signal(arg).ok_or_else(|| bad("unknown signal"))?)
        }
        "exit" => {
            expect_args(1)?;
            let code = number(0, "N")?;
            if code > 255 {
                return Err(bad("N must be at most 255"));
            }
            Directive::Exit(code as i32)
        }
        "garbage" => {
            expect_args(1)?;
            Directive::Garbage(size(number(0, "N")?)?)
        }
        "huge" => {
            expect_args(1)?;
            Directive::Huge(size(number(0, "N")?)?)
        }
        "stderr" => {
            expect_args(1)?;
            Directive::Stderr(size(number(0, "N")?)?)
        }
        "say" => Directive::Say(rest.to_string()),
        "result" => {
            expect_args(0)?;
            Directive::Result
        }
        "claude-json" => {
            expect_args(0)?;
            Directive::ClaudeJson
        }
        "close-stdout" => {
            expect_args(0)?;
            Directive::CloseStdout
        }
        "linger" => {
            expect_args(1)?;
            if args.is_empty() {
                Directive::Linger(None)
            } else {
                Directive::Linger(Some(number(0, "MS")?))
            }
        }
        _ => return Err(format!("unknown directive [[{body}]]")),
    };
    Ok(directive)
}

/// Accepts `SEGV`, `SIGSEGV`, `segv` or a number.
fn parse_signal(arg: &str) -> Option<Signal> {
    let upper = arg.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    sys::parse_signal(arg, &name)
}

/// The value of `--session-id` or `--resume`, in either `--x=V` or `--x V` form.
fn session_id(args: &[String]) -> &str {
    for (index, arg) in args.iter().enumerate() {
        for flag in ["--session-id", "--resume"] {
            if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return value;
            }
            if arg == flag
                && let Some(value) = args.get(index + 1)
            {
                return value;
            }
        }
    }
    DEFAULT_SESSION_ID
}

/// The fields of `claude -p --output-format json`'s answer, in the order the real CLI
/// writes them (a `json!` map would sort them).
#[derive(Serialize)]
struct ClaudeResult<'a> {
    r#type: &'a str,
    subtype: &'a str,
    is_error: bool,
    result: String,
    session_id: &'a str,
    num_turns: u32,
    total_cost_usd: f64,
    duration_ms: u64,
    usage: ClaudeUsage,
}

#[derive(Serialize)]
struct ClaudeUsage {
    input_tokens: u64,
    output_tokens: u64,
}

fn claude_json_result(prompt_text: &str, session_id: &str) -> String {
    let result = ClaudeResult {
        r#type: "result",
        subtype: "success",
        is_error: false,
        result: format!("done: {prompt_text}"),
        session_id,
        num_turns: 1,
        total_cost_usd: 0.0,
        duration_ms: 1,
        usage: ClaudeUsage {
            input_tokens: 1,
            output_tokens: 1,
        },
    };
    serde_json::to_string(&result).unwrap_or_else(|err| fail(&format!("cannot encode JSON: {err}")))
}

fn tick(millis: u64, every: u64) {
    let start = Instant::now();
    let end = start + Duration::from_millis(millis);
    let mut count: u64 = 0;
    while Instant::now() < end {
        count += 1;
        print_line(&format!("tick {count}"));
        let next = start + Duration::from_millis(every.saturating_mul(count));
        thread::sleep(next.min(end).saturating_duration_since(Instant::now()));
    }
}

/// Allocates `mib` MiB and writes to every page, so the memory is resident and not just
/// promised by the kernel.
fn touched_allocation(mib: usize) -> Vec<u8> {
    let len = mib
        .checked_mul(MIB)
        .unwrap_or_else(|| fail(&format!("cannot allocate {mib} MiB")));
    let mut memory = vec![0u8; len];
    for index in (0..len).step_by(PAGE) {
        memory[index] = 1;
    }
    // Without this the compiler may drop writes that nothing reads.
    black_box(&mut memory);
    memory
}

fn spawn_grandchildren(count: u32) {
    let exe = std::env::current_exe()
        .unwrap_or_else(|err| fail(&format!("cannot find my own executable: {err}")));
    for _ in 0..count {
        // The child is not waited for: leaked, like the stray processes of a real agent.
        if let Err(err) = Command::new(&exe)
            .arg(GRANDCHILD_ARG)
            .stdin(Stdio::null())
            .spawn()
        {
            fail(&format!("cannot start a grandchild: {err}"));
        }
    }
}

/// Starts a grandchild out of the agent's process group (Unix) or job (Windows), and says
/// whether that worked.
fn escape() {
    let exe = std::env::current_exe()
        .unwrap_or_else(|err| fail(&format!("cannot find my own executable: {err}")));
    let mut cmd = Command::new(&exe);
    cmd.arg(GRANDCHILD_ARG).stdin(Stdio::null());
    sys::out_of_reach(&mut cmd);
    match cmd.spawn() {
        Ok(child) => println!("escaped: {}", child.id()),
        Err(err) => println!("escape refused: {err}"),
    }
    flush_stdout();
}

/// A leaked descendant: survives SIGTERM and keeps the inherited stdout and stderr open.
fn run_grandchild() -> ! {
    sys::ignore_term();
    sleep_forever();
}

fn crash(signal: Signal) {
    flush_all();
    sys::crash(signal);
}

/// Lets go of stdout: the reader of the pipe sees its write end closed.
fn close_stdout() {
    flush_stdout();
    if let Err(err) = sys::close_stdout() {
        fail(&format!("cannot replace stdout: {err}"));
    }
}

/// What differs between Unix and Windows for a misbehaving agent. On Windows there are no
/// signals: a "polite stop" is CTRL_BREAK (the C runtime's SIGBREAK), and a crash is an exit with
/// the code Windows gives the crash (an access violation's 0xC0000005, abort's 3).
#[cfg(unix)]
mod sys {
    use std::ffi::c_int;
    use std::fs::File;
    use std::str::FromStr;

    pub use nix::sys::signal::Signal;

    pub fn parse_signal(arg: &str, name: &str) -> Option<Signal> {
        if let Ok(number) = arg.parse::<i32>() {
            return Signal::try_from(number).ok();
        }
        Signal::from_str(name).ok()
    }

    pub fn out_of_reach(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }

    pub fn ignore_term() {
        // SAFETY: changing a disposition; no other thread of ours handles signals.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }

    pub fn stop_on_term() {
        // SAFETY: `on_term` calls only write(2) and _exit(2), both async-signal-safe.
        unsafe {
            libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        }
    }

    /// SIGTERM handler for `stop-on-term`. Only async-signal-safe calls are allowed here.
    extern "C" fn on_term(_signal: c_int) {
        const MESSAGE: &[u8] = b"got TERM\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MESSAGE is a static buffer.
        unsafe {
            libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(143);
        }
    }

    pub fn crash(signal: Signal) {
        // The Rust runtime handles SIGSEGV and SIGBUS itself, and an earlier directive may have
        // ignored or caught SIGTERM: with the default action the signal really ends the process.
        // SAFETY: changing a disposition; no other thread of ours handles signals.
        unsafe {
            libc::signal(signal as c_int, libc::SIG_DFL);
        }
        let _ = nix::sys::signal::raise(signal);
    }

    /// /dev/null is put in stdout's place rather than leaving fd 1 closed: the next file opened
    /// would otherwise get fd 1 and receive whatever is printed later.
    pub fn close_stdout() -> std::io::Result<()> {
        let null = File::options().write(true).open("/dev/null")?;
        nix::unistd::dup2_stdout(&null)?;
        Ok(())
    }
}

#[cfg(windows)]
mod sys {
    use std::os::windows::io::IntoRawHandle;

    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Console::{GetStdHandle, STD_OUTPUT_HANDLE, SetStdHandle};

    /// A signal's number, as Unix numbers them (what the tests write).
    pub type Signal = i32;

    const SIGBREAK: i32 = 21;

    pub fn parse_signal(arg: &str, name: &str) -> Option<Signal> {
        if let Ok(number) = arg.parse::<i32>() {
            return (1..=31).contains(&number).then_some(number);
        }
        let table = [
            ("SIGHUP", 1),
            ("SIGINT", 2),
            ("SIGQUIT", 3),
            ("SIGILL", 4),
            ("SIGABRT", 6),
            ("SIGBUS", 7),
            ("SIGFPE", 8),
            ("SIGKILL", 9),
            ("SIGUSR1", 10),
            ("SIGSEGV", 11),
            ("SIGUSR2", 12),
            ("SIGPIPE", 13),
            ("SIGALRM", 14),
            ("SIGTERM", 15),
            ("SIGCHLD", 17),
            ("SIGCONT", 18),
            ("SIGSTOP", 19),
        ];
        table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    pub fn out_of_reach(cmd: &mut std::process::Command) {
        use std::os::windows::process::CommandExt;
        use windows_sys::Win32::System::Threading::CREATE_BREAKAWAY_FROM_JOB;
        cmd.creation_flags(CREATE_BREAKAWAY_FROM_JOB);
    }

    pub fn ignore_term() {
        // SAFETY: the C runtime's signal() with SIG_IGN.
        unsafe {
            libc::signal(SIGBREAK, libc::SIG_IGN);
        }
    }

    pub fn stop_on_term() {
        // SAFETY: the C runtime runs the handler on a thread of its own; it writes and exits.
        unsafe {
            libc::signal(SIGBREAK, on_break as *const () as libc::sighandler_t);
        }
    }

    extern "C" fn on_break(_signal: i32) {
        eprintln!("got TERM");
        std::process::exit(143);
    }

    pub fn crash(signal: Signal) {
        let code = match signal {
            11 | 7 => 0xC000_0005_u32 as i32, // access violation
            8 => 0xC000_0094_u32 as i32,      // integer divide by zero
            4 => 0xC000_001D_u32 as i32,      // illegal instruction
            6 => 3,                           // abort()
            17 | 18 | 19 => return,           // ignored by default on Unix: go on
            _ => 1,                           // TerminateProcess's usual code
        };
        std::process::exit(code);
    }

    pub fn close_stdout() -> std::io::Result<()> {
        let null = std::fs::File::options().write(true).open("NUL")?;
        // SAFETY: the standard output handle is replaced by one this process owns from now on,
        // and the old one (the pipe) is closed: its reader sees the end.
        unsafe {
            let old = GetStdHandle(STD_OUTPUT_HANDLE);
            if SetStdHandle(STD_OUTPUT_HANDLE, null.into_raw_handle() as _) == 0 {
                return Err(std::io::Error::last_os_error());
            }
            CloseHandle(old);
        }
        Ok(())
    }
}

/// Appends this process's pid to the file named by `AGENTQ_TEST_PIDS`, so a test can find
/// and check every process the agent left behind.
fn record_pid() {
    let Some(path) = std::env::var_os(PIDS_ENV) else {
        return;
    };
    let line = format!("{}\n", process::id());
    // One write(2) of a short line to a file opened for append lands whole, even when
    // grandchildren append at the same moment.
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(err) = written {
        fail(&format!("cannot append to {}: {err}", path.display()));
    }
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn print_line(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    write_stdout(line.as_bytes());
    flush_stdout();
}

/// A closed pipe kills the process by SIGPIPE before an error can come back here; any other
/// write error ends it with a message instead of a panic.
fn write_stdout(bytes: &[u8]) {
    if let Err(err) = io::stdout().write_all(bytes) {
        fail(&format!("cannot write to stdout: {err}"));
    }
}

fn flush_stdout() {
    if let Err(err) = io::stdout().flush() {
        fail(&format!("cannot write to stdout: {err}"));
    }
}

fn flush_all() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

fn fail(message: &str) -> ! {
    let _ = writeln!(io::stderr(), "agentq-test-agent: {message}");
    process::exit(2);
}
