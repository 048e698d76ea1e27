//! `agentq top` on a terminal: a live, interactive view of the workers, the latest tasks, and the
//! selected task's transcript or the latest events, in the terminal's alternate screen.
//!
//! Keys: `q` (or Ctrl-C) quits; ↑/↓ (or k/j) select a task; Enter shows the selected task's live
//! transcript (again: back to the events); `c` cancels the selected task (a running one asks for
//! `y`); `r` retries it; `p` pauses or resumes its worker; `/` filters the tasks by what is typed
//! (worker, state or prompt; Enter keeps it, Esc clears it).
//!
//! As gitui and bottom are written: [`State`] holds what is shown, [`render`] draws it (a pure
//! function of the state, tested on ratatui's `TestBackend`), [`State::key`] maps a key to an
//! [`Action`], and [`run`] is the loop that reads keys on a thread, refreshes from the store every
//! interval and follows the transcript. Colour only where `NO_COLOR` is unset; selection is shown
//! reversed, which needs none. Nothing wraps: a column or line too long for the screen is cut.
//! Where standard output is not a terminal, `top` prints frames of text instead (`crate::top`).

use std::path::PathBuf;
use std::time::Duration;

use agentq_core::domain::{POOL, TaskState};
use agentq_core::error::Result;
use agentq_core::transcript::{Entry, Kind};
use agentq_daemon::config::Config;
use agentq_daemon::ops::Status;
use agentq_store::{Millis, Store, TaskFilter, TaskSummary, now_ms};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

/// What the bottom (or, on a wide screen, right) pane shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Events,
    Transcript,
}

/// What a key asks of the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Cancel(i64),
    Retry(i64),
    Pause(String),
    Resume(String),
    /// Show this task's transcript (from its start).
    Follow(i64),
}

/// A question waiting for `y`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirm {
    Cancel(i64),
}

pub struct State {
    pub root: PathBuf,
    pub color: bool,
    pub now: Millis,
    pub status: Option<Status>,
    pub tasks: Vec<TaskSummary>,
    /// The latest events, one line each, oldest first.
    pub events: Vec<String>,
    /// The task selected, by id (it stays selected as the list moves).
    pub selected: Option<i64>,
    pub filter: String,
    /// Typing a filter.
    pub filtering: bool,
    pub pane: Pane,
    /// The transcript shown, of `transcript_of`.
    pub transcript: Vec<Entry>,
    pub transcript_of: Option<i64>,
    pub confirm: Option<Confirm>,
    /// What the last action did, or why it could not.
    pub message: Option<String>,
}

impl State {
    pub fn new(root: PathBuf, color: bool) -> State {
        State {
            root,
            color,
            now: now_ms(),
            status: None,
            tasks: Vec::new(),
            events: Vec::new(),
            selected: None,
            filter: String::new(),
            filtering: false,
            pane: Pane::Events,
            transcript: Vec::new(),
            transcript_of: None,
            confirm: None,
            message: None,
        }
    }

    /// The tasks the filter lets through, newest first.
    pub fn visible(&self) -> Vec<&TaskSummary> {
        let needle = self.filter.to_lowercase();
        self.tasks
            .iter()
            .filter(|t| {
                needle.is_empty()
                    || t.worker.to_lowercase().contains(&needle)
                    || t.state.as_str().contains(&needle)
                    || t.prompt_preview.to_lowercase().contains(&needle)
                    || t.id.to_string() == needle
            })
            .collect()
    }

    /// The selected task, if it is shown; else the first shown.
    pub fn current(&self) -> Option<&TaskSummary> {
        let visible = self.visible();
        visible
            .iter()
            .find(|t| Some(t.id) == self.selected)
            .or(visible.first())
            .copied()
    }

    fn move_selection(&mut self, by: isize) {
        let ids: Vec<i64> = self.visible().iter().map(|t| t.id).collect();
        if ids.is_empty() {
            return;
        }
        let at = self
            .current()
            .and_then(|t| ids.iter().position(|id| *id == t.id))
            .unwrap_or(0) as isize;
        let to = (at + by).clamp(0, ids.len() as isize - 1) as usize;
        self.selected = Some(ids[to]);
    }

    /// What `key` asks for; moves the selection and edits the filter itself.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.filtering {
            match key.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            return Action::None;
        }
        if let Some(Confirm::Cancel(id)) = self.confirm.take() {
            if key.code == KeyCode::Char('y') {
                return Action::Cancel(id);
            }
            self.message = Some(format!("task {id} left running"));
            return Action::None;
        }
        self.message = None;
        let current = self
            .current()
            .map(|t| (t.id, t.state, t.worker.clone(), t.pool));
        match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => {
                self.move_selection(-1);
                self.follow_selection()
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.move_selection(1);
                self.follow_selection()
            }
            KeyCode::PageUp => {
                self.move_selection(-10);
                self.follow_selection()
            }
            KeyCode::PageDown => {
                self.move_selection(10);
                self.follow_selection()
            }
            KeyCode::Char('/') => {
                self.filtering = true;
                Action::None
            }
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                Action::None
            }
            KeyCode::Enter => match (self.pane, current) {
                (Pane::Events, Some((id, ..))) => {
                    self.pane = Pane::Transcript;
                    Action::Follow(id)
                }
                _ => {
                    self.pane = Pane::Events;
                    Action::None
                }
            },
            KeyCode::Char('c') => match current {
                Some((id, TaskState::Running, ..)) => {
                    self.confirm = Some(Confirm::Cancel(id));
                    Action::None
                }
                Some((id, TaskState::Queued, ..)) => Action::Cancel(id),
                Some((id, state, ..)) => {
                    self.message = Some(format!("task {id} is {state}: nothing to cancel"));
                    Action::None
                }
                None => Action::None,
            },
            KeyCode::Char('r') => match current {
                Some((id, TaskState::Failed | TaskState::Dead | TaskState::Cancelled, ..)) => {
                    Action::Retry(id)
                }
                Some((id, state, ..)) => {
                    self.message = Some(format!(
                        "task {id} is {state}: only failed, dead or cancelled tasks are retried"
                    ));
                    Action::None
                }
                None => Action::None,
            },
            KeyCode::Char('p') => {
                let Some((_, _, worker, pool)) = current else {
                    return Action::None;
                };
                let name = if pool { POOL.to_string() } else { worker };
                let paused = self
                    .status
                    .as_ref()
                    .and_then(|s| s.workers.iter().find(|w| w.name == name))
                    .is_some_and(|w| w.paused_until.is_some());
                if paused {
                    Action::Resume(name)
                } else {
                    Action::Pause(name)
                }
            }
            _ => Action::None,
        }
    }

    /// With the transcript shown, moving the selection shows the newly selected task's.
    fn follow_selection(&mut self) -> Action {
        match (self.pane, self.current().map(|t| t.id)) {
            (Pane::Transcript, Some(id)) if Some(id) != self.transcript_of => Action::Follow(id),
            _ => Action::None,
        }
    }

    fn style(&self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    fn state_style(&self, state: &str) -> Style {
        let word = state.split([' ', ':']).next().unwrap_or("");
        match word {
            "running" => self.style(Color::Blue),
            "succeeded" | "idle" => self.style(Color::Green),
            "failed" | "dead" | "errored" => self.style(Color::Red),
            "queued" | "paused" => self.style(Color::Yellow),
            _ => Style::new(),
        }
    }
}

/// Screens at least this wide show the pane beside the tasks, and more columns.
const WIDE: u16 = 140;

/// Draws the whole screen.
pub fn render(state: &State, frame: &mut Frame) {
    let area = frame.area();
    let wide = area.width >= WIDE;
    let workers = state.status.as_ref().map_or(0, |s| s.workers.len()) as u16;
    // Title line and column heads, then a row each, never more than a third of the screen.
    let workers_height = (workers + 2).clamp(3, (area.height / 3).max(3));
    let [head, workers_area, rest, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(workers_height),
        Constraint::Min(4),
        Constraint::Length(2),
    ])
    .areas(area);
    let (tasks_area, pane_area) = if wide {
        let [a, b] = Layout::new(
            Direction::Horizontal,
            [Constraint::Percentage(55), Constraint::Percentage(45)],
        )
        .areas(rest);
        (a, b)
    } else {
        let [a, b] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(rest);
        (a, b)
    };
    frame.render_widget(Paragraph::new(header(state)), head);
    render_workers(state, frame, workers_area, wide);
    render_tasks(state, frame, tasks_area, wide);
    match state.pane {
        Pane::Events => render_events(state, frame, pane_area),
        Pane::Transcript => render_transcript(state, frame, pane_area),
    }
    frame.render_widget(Paragraph::new(footer(state)), foot);
}

fn header(state: &State) -> Line<'static> {
    let daemon = match &state.status {
        Some(s) => match s.pid {
            Some(pid) => {
                let up = s
                    .started_at
                    .map(|t| format!(", up {}", crate::top::ago(t, state.now)))
                    .unwrap_or_default();
                let memory = s
                    .memory_mb
                    .map(|m| format!(", {m:.1} MiB"))
                    .unwrap_or_default();
                format!("daemon pid {pid}{up}{memory}")
            }
            None => "daemon not running (start it with `agentq run`)".to_string(),
        },
        None => "reading the queue…".to_string(),
    };
    Line::from(vec![
        Span::styled("agentq top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(daemon),
        Span::raw(format!("  {}", state.root.display())),
    ])
}

fn section(title: &str) -> Block<'_> {
    Block::new()
        .borders(Borders::TOP)
        .title(format!(" {title} "))
}

fn render_workers(state: &State, frame: &mut Frame, area: Rect, wide: bool) {
    let Some(status) = &state.status else {
        frame.render_widget(section("workers"), area);
        return;
    };
    let mut heads = vec![
        "WORKER", "AGENT", "STATE", "TASK", "QUEUED", "DONE", "FAILED", "MEMORY",
    ];
    let mut widths = vec![
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(9),
    ];
    if wide {
        heads.extend(["PID", "RESTARTS", "UP", "SPENT TODAY", "SESSION"]);
        widths.extend([
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(9),
        ]);
    }
    let rows = status.workers.iter().map(|w| {
        let mut cells = vec![
            Cell::from(w.name.clone()),
            Cell::from(if w.mode == "persistent" {
                format!("{}*", w.agent)
            } else {
                w.agent.clone()
            }),
            Cell::from(w.state.clone()).style(state.state_style(&w.state)),
            Cell::from(w.task.map_or("-".into(), |t| t.to_string())),
            Cell::from(w.queued.to_string()),
            Cell::from(w.succeeded.to_string()),
            Cell::from((w.failed + w.dead).to_string()),
            Cell::from(w.memory_mb.map_or("-".into(), |m| format!("{m:.1} MiB"))),
        ];
        if wide {
            cells.extend([
                Cell::from(w.pid.map_or("-".into(), |p| p.to_string())),
                Cell::from(w.restarts.map_or("-".into(), |r| r.to_string())),
                Cell::from(
                    w.up_since
                        .map_or("-".into(), |t| crate::top::ago(t, state.now)),
                ),
                Cell::from(if w.cost_today_usd > 0.0 || w.tokens_today == 0 {
                    format!("${:.2}", w.cost_today_usd)
                } else {
                    format!("{} tok", w.tokens_today)
                }),
                Cell::from(
                    w.session_id
                        .as_deref()
                        .map_or("-".to_string(), |s| s.chars().take(8).collect::<String>()),
                ),
            ]);
        }
        Row::new(cells)
    });
    let pool = &status.pool;
    let title = format!(
        "workers · pool {} of {} running, {} queued",
        status.pool_tasks.len(),
        status.max_workers,
        pool.queued
    );
    let table = Table::new(rows, widths)
        .header(Row::new(heads).style(Style::new().add_modifier(Modifier::DIM)))
        .block(section(&title));
    frame.render_widget(table, area);
}

fn render_tasks(state: &State, frame: &mut Frame, area: Rect, wide: bool) {
    let visible = state.visible();
    let current = state.current().map(|t| t.id);
    let mut heads = vec!["ID", "WORKER", "STATE", "TRIES", "TOOK", "PROMPT"];
    let mut widths = vec![
        Constraint::Length(6),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    if wide {
        heads.insert(5, "CLASS");
        widths.insert(5, Constraint::Length(11));
    }
    // Rows that fit below the title and the heads, scrolled so the selection shows.
    let room = area.height.saturating_sub(2) as usize;
    let at = visible
        .iter()
        .position(|t| Some(t.id) == current)
        .unwrap_or(0);
    let skip = (at + 1).saturating_sub(room);
    let rows = visible.iter().skip(skip).take(room).map(|t| {
        let took = match (t.state, t.duration_ms) {
            (_, Some(ms)) => crate::top::ago(0, ms),
            _ => "-".into(),
        };
        let mut cells = vec![
            Cell::from(t.id.to_string()),
            Cell::from(if t.pool {
                format!("{} (pool)", t.worker)
            } else {
                t.worker.clone()
            }),
            Cell::from(t.state.to_string()).style(state.state_style(t.state.as_str())),
            Cell::from(format!("{}/{}", t.attempts, t.max_attempts)),
            Cell::from(took),
            Cell::from(t.prompt_preview.clone()),
        ];
        if wide {
            cells.insert(5, Cell::from(t.class.clone().unwrap_or_else(|| "-".into())));
        }
        let row = Row::new(cells);
        if Some(t.id) == current {
            row.style(Style::new().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let title = if state.filter.is_empty() {
        format!("tasks ({})", visible.len())
    } else {
        format!("tasks matching {:?} ({})", state.filter, visible.len())
    };
    let table = Table::new(rows, widths)
        .header(Row::new(heads).style(Style::new().add_modifier(Modifier::DIM)))
        .block(section(&title));
    frame.render_widget(table, area);
}

fn render_events(state: &State, frame: &mut Frame, area: Rect) {
    let room = area.height.saturating_sub(1) as usize;
    let from = state.events.len().saturating_sub(room);
    let lines: Vec<Line> = state.events[from..]
        .iter()
        .map(|e| Line::raw(e.clone()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(section(
            "latest events · Enter: the selected task's transcript",
        )),
        area,
    );
}

fn render_transcript(state: &State, frame: &mut Frame, area: Rect) {
    let room = area.height.saturating_sub(1) as usize;
    let mut lines: Vec<Line> = Vec::new();
    for e in &state.transcript {
        lines.extend(entry_lines(state, e));
    }
    if lines.is_empty() {
        lines.push(Line::raw("(nothing yet)"));
    }
    let from = lines.len().saturating_sub(room);
    let lines = lines.split_off(from);
    let title = match state.transcript_of {
        Some(id) => format!("task {id} transcript · Enter: events"),
        None => "transcript".to_string(),
    };
    frame.render_widget(Paragraph::new(lines).block(section(&title)), area);
}

/// An entry as screen lines: a mark of its kind, then its text (a tool result: its first lines).
fn entry_lines(state: &State, e: &Entry) -> Vec<Line<'static>> {
    let tool = e.tool.clone().unwrap_or_else(|| "tool".into());
    let (mark, style, most) = match e.kind {
        Kind::Text | Kind::Stdout => (String::new(), Style::new(), usize::MAX),
        Kind::Thinking => (
            "(thinking) ".into(),
            Style::new().add_modifier(Modifier::DIM),
            usize::MAX,
        ),
        Kind::ToolCall => (format!("→ {tool} "), state.style(Color::Cyan), 1),
        Kind::ToolResult => (
            format!("← {tool} "),
            if e.error {
                state.style(Color::Red)
            } else {
                Style::new().add_modifier(Modifier::DIM)
            },
            3,
        ),
        Kind::Status => (
            "· ".into(),
            Style::new().add_modifier(Modifier::DIM),
            usize::MAX,
        ),
        Kind::Stderr => ("stderr: ".into(), state.style(Color::Yellow), usize::MAX),
        Kind::Result => (
            "= ".into(),
            state.style(if e.error { Color::Red } else { Color::Green }),
            usize::MAX,
        ),
    };
    let indent = " ".repeat(mark.chars().count());
    let mut out: Vec<Line<'static>> = e
        .text
        .lines()
        .take(most)
        .enumerate()
        .map(|(i, text)| {
            let lead = if i == 0 { mark.clone() } else { indent.clone() };
            Line::styled(format!("{lead}{text}"), style)
        })
        .collect();
    if out.is_empty() {
        out.push(Line::styled(mark, style));
    }
    out
}

fn footer(state: &State) -> Vec<Line<'static>> {
    let said = if state.filtering {
        format!("filter: {}▏ (Enter keeps it, Esc clears it)", state.filter)
    } else if let Some(Confirm::Cancel(id)) = &state.confirm {
        format!("cancel task {id}, stopping its agent? y to confirm, any other key to keep it")
    } else {
        state.message.clone().unwrap_or_default()
    };
    vec![
        Line::styled(said, state.style(Color::Yellow)),
        Line::styled(
            "q quit  ↑↓ select  Enter transcript  c cancel  r retry  p pause/resume  / filter",
            Style::new().add_modifier(Modifier::DIM),
        ),
    ]
}

/// The terminal in raw mode and the alternate screen, put back as it was when dropped (also when
/// the loop fails).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn io(e: std::io::Error) -> agentq_core::error::Error {
    agentq_core::error::Error::Io {
        about: "drawing on",
        path: PathBuf::from("the terminal"),
        source: e,
    }
}

/// Runs the view until `q`, Ctrl-C or a request to stop (SIGTERM).
pub async fn run(config: &Config, store: &dyn Store, interval: Duration) -> Result<()> {
    let color = agentq_platform::term::color_allowed();
    let mut state = State::new(config.root.clone(), color);
    let screen = Screen::enter().map_err(io)?;
    let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
    let mut terminal = ratatui::Terminal::new(backend).map_err(io)?;
    terminal.clear().map_err(io)?;
    // Keys (and resizes) come from a thread: crossterm's read blocks.
    let (keys, mut pressed) = tokio::sync::mpsc::unbounded_channel::<Event>();
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if keys.send(event).is_err() {
                return;
            }
        }
    });
    let mut requests = agentq_platform::signals::StopRequests::listen().map_err(io)?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follow_tick = tokio::time::interval(agentq_daemon::watch::FOLLOW_EVERY);
    let mut follow: Option<agentq_daemon::watch::TaskFollow> = None;
    let bell = crate::commands::doorbell(config);
    let result: Result<()> = loop {
        tokio::select! {
            _ = requests.recv() => break Ok(()),
            _ = tick.tick() => {
                if let Err(e) = refresh(config, store, &mut state).await {
                    state.message = Some(format!("cannot read the queue: {e}"));
                }
            }
            _ = follow_tick.tick(), if follow.is_some() => {
                if let Some(f) = follow.as_mut()
                    && let Ok(found) = f.next().await
                {
                    state.transcript.extend(found.entries);
                    // A screenful is all that is shown: keep a few screens.
                    if state.transcript.len() > 2000 {
                        state.transcript.drain(..1000);
                    }
                }
            }
            event = pressed.recv() => {
                let Some(event) = event else { break Ok(()) };
                // Anything else (a resize) only asks for a new drawing.
                let Event::Key(key) = event else {
                    state.now = now_ms();
                    if let Err(e) = terminal.draw(|f| render(&state, f)) {
                        break Err(io(e));
                    }
                    continue;
                };
                let action = state.key(key);
                match action {
                    Action::None => {}
                    Action::Quit => break Ok(()),
                    Action::Follow(id) => {
                        state.transcript.clear();
                        state.transcript_of = Some(id);
                        follow = store
                            .get(id)
                            .await?
                            .map(|task| agentq_daemon::watch::TaskFollow::new(config, &task, 0));
                        follow_tick.reset_immediately();
                    }
                    other => {
                        state.message = Some(perform(config, store, &bell, other).await);
                        let _ = refresh(config, store, &mut state).await;
                    }
                }
                if state.pane == Pane::Events {
                    follow = None;
                }
            }
        }
        state.now = now_ms();
        if let Err(e) = terminal.draw(|f| render(&state, f)) {
            break Err(io(e));
        }
    };
    drop(terminal);
    drop(screen);
    result
}

/// Reads the status, the latest tasks and events.
async fn refresh(config: &Config, store: &dyn Store, state: &mut State) -> Result<()> {
    let pid = agentq_core::state::holder(&config.state_dir())?;
    state.status = Some(agentq_daemon::ops::status(config, store, pid).await?);
    state.tasks = store
        .list(&TaskFilter {
            limit: Some(500),
            ..Default::default()
        })
        .await?;
    let events = store
        .events(&agentq_store::EventFilter {
            limit: Some(60),
            ..Default::default()
        })
        .await?;
    state.events = events
        .iter()
        .map(|e| crate::top::event_line(&e.to_log()))
        .collect();
    Ok(())
}

/// Does what a key asked; says what came of it.
async fn perform(
    config: &Config,
    store: &dyn Store,
    bell: &(dyn Fn(agentq_core::wake::Ring) + Send + Sync),
    action: Action,
) -> String {
    use agentq_daemon::ops;
    let done = match &action {
        Action::Cancel(id) => ops::cancel(store, bell, *id)
            .await
            .map(|_| format!("task {id} cancelled")),
        Action::Retry(id) => ops::retry(store, bell, *id)
            .await
            .map(|_| format!("task {id} queued again")),
        Action::Pause(name) => ops::pause(config, store, name, None, "paused from `agentq top`")
            .await
            .map(|_| format!("{name} paused (p again resumes it)")),
        Action::Resume(name) => ops::resume(config, store, bell, name, "resumed from `agentq top`")
            .await
            .map(|_| format!("{name} resumed")),
        Action::None | Action::Quit | Action::Follow(_) => return String::new(),
    };
    done.unwrap_or_else(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn task(id: i64, worker: &str, state: TaskState, prompt: &str) -> TaskSummary {
        TaskSummary {
            id,
            worker: worker.into(),
            state,
            priority: 0,
            attempts: 1,
            max_attempts: 3,
            created_at: 0,
            finished_at: None,
            duration_ms: Some(1500),
            error: None,
            prompt_preview: prompt.into(),
            pool: false,
            class: Some("short".into()),
        }
    }

    fn state() -> State {
        let mut s = State::new(PathBuf::from("/work/project"), false);
        s.status = Some(crate::top::tests::busy());
        s.now = crate::top::tests::NOW;
        s.tasks = vec![
            task(
                42,
                "reviewer",
                TaskState::Running,
                "Review the parser change and say what breaks when the input is empty or enormous",
            ),
            task(41, "docs", TaskState::Failed, "Update the README"),
            task(40, "docs", TaskState::Succeeded, "Fix a typo"),
        ];
        s.events = (0..30).map(|i| format!("event line {i}")).collect();
        s
    }

    fn screen(state: &State, width: u16, height: u16) -> Vec<String> {
        let mut terminal = ratatui::Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| render(state, f)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn an_80_by_24_screen_shows_workers_tasks_events_and_keys() {
        let lines = screen(&state(), 80, 24);
        let all = lines.join("\n");
        assert!(lines[0].starts_with("agentq top daemon"), "{all}");
        for needle in [
            "WORKER",
            "reviewer",
            "TASK",
            "42",
            "Review the parser",
            "latest events",
            "event line 29",
            "q quit",
        ] {
            assert!(all.contains(needle), "{needle:?} in\n{all}");
        }
        // Wide-screen columns are left out.
        assert!(!all.contains("RESTARTS"), "{all}");
    }

    #[test]
    fn a_wide_screen_puts_the_pane_beside_the_tasks_with_more_columns() {
        let lines = screen(&state(), 200, 50);
        let all = lines.join("\n");
        assert!(all.contains("RESTARTS") && all.contains("CLASS"), "{all}");
        let task_row = lines
            .iter()
            .find(|l| l.contains("Review the parser"))
            .unwrap();
        assert!(
            task_row.contains("event line"),
            "the events beside the tasks: {task_row}"
        );
    }

    #[test]
    fn keys_select_filter_and_ask_before_cancelling_a_running_task() {
        let mut s = state();
        assert_eq!(s.current().unwrap().id, 42);
        assert_eq!(s.key(key(KeyCode::Down)), Action::None);
        assert_eq!(s.current().unwrap().id, 41);
        assert_eq!(s.key(key(KeyCode::Char('r'))), Action::Retry(41));
        assert_eq!(s.key(key(KeyCode::Enter)), Action::Follow(41));
        assert_eq!(s.pane, Pane::Transcript);
        s.transcript_of = Some(41);
        assert_eq!(
            s.key(key(KeyCode::Down)),
            Action::Follow(40),
            "the transcript follows the selection"
        );
        assert_eq!(s.key(key(KeyCode::Enter)), Action::None);
        assert_eq!(s.pane, Pane::Events);
        assert_eq!(s.key(key(KeyCode::Char('c'))), Action::None);
        assert!(s.message.as_deref().unwrap().contains("nothing to cancel"));

        // The filter: typed, kept with Enter, cleared with Esc.
        s.key(key(KeyCode::Char('/')));
        for c in "review".chars() {
            s.key(key(KeyCode::Char(c)));
        }
        s.key(key(KeyCode::Enter));
        assert_eq!(s.visible().len(), 1);
        assert_eq!(s.current().unwrap().id, 42);
        assert_eq!(s.key(key(KeyCode::Char('c'))), Action::None, "asks first");
        assert_eq!(s.confirm, Some(Confirm::Cancel(42)));
        assert!(screen(&s, 80, 24).join("\n").contains("y to confirm"));
        assert_eq!(s.key(key(KeyCode::Char('y'))), Action::Cancel(42));
        assert_eq!(
            s.key(key(KeyCode::Char('p'))),
            Action::Pause("reviewer".into())
        );
        s.key(key(KeyCode::Esc));
        assert_eq!(s.visible().len(), 3);
        assert_eq!(s.key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(
            s.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn a_transcript_shows_its_newest_lines_with_marks() {
        let mut s = state();
        s.pane = Pane::Transcript;
        s.transcript_of = Some(42);
        let entry = |seq, kind, tool: Option<&str>, text: &str| Entry {
            seq,
            ts: 0,
            attempt: 1,
            kind,
            tool: tool.map(str::to_string),
            text: text.into(),
            error: false,
        };
        s.transcript = (1..=40)
            .map(|i| entry(i, Kind::Text, None, &format!("thought {i}")))
            .collect();
        s.transcript
            .push(entry(41, Kind::ToolCall, Some("Bash"), "cargo test"));
        s.transcript.push(entry(
            42,
            Kind::ToolResult,
            Some("Bash"),
            "ok\nline 2\nline 3\nline 4",
        ));
        let all = screen(&s, 80, 24).join("\n");
        assert!(all.contains("task 42 transcript"), "{all}");
        assert!(all.contains("→ Bash cargo test"), "{all}");
        assert!(
            all.contains("← Bash ok") && all.contains("line 3") && !all.contains("line 4"),
            "{all}"
        );
        assert!(!all.contains("thought 1\n"), "only the newest lines: {all}");
    }
}
