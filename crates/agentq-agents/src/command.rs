//! Any program as an agent (`agent = "command"`): the prompt on its stdin, its stdout the result,
//! exit code 0 success. It keeps no conversation of its own; a program that wants one keeps it
//! itself (`AGENTQ_WORKER` and `AGENTQ_TASK_ID` are in its environment).

use std::path::{Path, PathBuf};

use super::{Driver, End, Output, Read, Reply};
use agentq_core::domain::Cause;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The program and its arguments; never empty (the config refuses that).
    pub argv: Vec<String>,
}

impl Driver for Settings {
    fn name(&self) -> &'static str {
        "command"
    }

    /// Its program is the command's first word, looked up as the config gives it.
    fn program_with(&self, _env_override: Option<&str>) -> PathBuf {
        PathBuf::from(self.argv.first().map(String::as_str).unwrap_or(""))
    }

    fn command(&self, program: &Path, _join: Option<&super::Join>, _spent: f64) -> Vec<String> {
        let mut argv = vec![program.to_string_lossy().into_owned()];
        argv.extend(self.argv.iter().skip(1).cloned());
        argv
    }

    fn read(&self, out: &Output) -> Read {
        let end = match out.exit_code {
            Some(0) | None => End::Done,
            Some(code) => End::failed(
                Cause::Crashed,
                format!("crashed ({})", super::exit_code(code)),
            ),
        };
        Read::Reply(Reply {
            text: out.stdout.to_string(),
            end,
            ..Reply::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_is_the_result_and_the_exit_code_the_verdict() {
        let s = Settings {
            argv: vec!["python3".into(), "agent.py".into()],
        };
        assert_eq!(s.command(&s.program(), None, 0.0), ["python3", "agent.py"]);
        let out = |code| Output {
            stdout: "done\n",
            stderr: "",
            exit_code: Some(code),
            now: chrono::Local::now(),
        };
        let Read::Reply(ok) = s.read(&out(0)) else {
            panic!()
        };
        assert_eq!((ok.text.as_str(), ok.end), ("done\n", End::Done));
        let Read::Reply(failed) = s.read(&out(2)) else {
            panic!()
        };
        assert_eq!(
            failed.end,
            End::failed(Cause::Crashed, "crashed (exit code 2)")
        );
    }
}
