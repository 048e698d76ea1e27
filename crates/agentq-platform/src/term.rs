//! The terminal agentq's interactive views draw on, and the console window a program started
//! without one is given.

/// Whether colour may be written: not where `NO_COLOR` is set to anything but the empty string
/// (no-color.org), whatever the stream is.
pub fn color_allowed() -> bool {
    color_allowed_by(std::env::var_os("NO_COLOR").as_deref())
}

fn color_allowed_by(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

/// Columns and rows of the terminal standard output goes to, if it is one.
pub fn size() -> Option<(u16, u16)> {
    imp::size().filter(|(c, r)| *c > 0 && *r > 0)
}

/// Lets the terminal interpret ANSI escape sequences (cursor moves, the alternate screen): a
/// Windows console does so only when asked (`ENABLE_VIRTUAL_TERMINAL_PROCESSING`, Windows 10 and
/// later); Unix terminals always do. Returns whether they will be.
pub fn enable_escapes() -> bool {
    imp::enable_escapes()
}

/// Closes this process's console window if the system opened it for this process alone, as it
/// does for a console program Task Scheduler starts in the user's session: no window stays on
/// the desktop. A console shared with a shell (a command typed in a terminal) is kept. Returns
/// whether it was closed. Unix has no such window: always `false`.
pub fn detach_own_console() -> bool {
    imp::detach_own_console()
}

#[cfg(unix)]
mod imp {
    pub fn enable_escapes() -> bool {
        true
    }

    pub fn size() -> Option<(u16, u16)> {
        // SAFETY: winsize is plain data; all-zero is valid and TIOCGWINSZ overwrites it.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer it is given.
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
        ok.then_some((ws.ws_col, ws.ws_row))
    }

    pub fn detach_own_console() -> bool {
        false
    }
}

#[cfg(windows)]
mod imp {
    use windows_sys::Win32::System::Console::{
        CONSOLE_SCREEN_BUFFER_INFO, ENABLE_VIRTUAL_TERMINAL_PROCESSING, FreeConsole,
        GetConsoleMode, GetConsoleProcessList, GetConsoleScreenBufferInfo, GetStdHandle,
        STD_OUTPUT_HANDLE, SetConsoleMode,
    };

    pub fn enable_escapes() -> bool {
        // SAFETY: the standard output handle, and a mode read before it is changed.
        unsafe {
            let out = GetStdHandle(STD_OUTPUT_HANDLE);
            let mut mode = 0;
            GetConsoleMode(out, &mut mode) != 0
                && (mode & ENABLE_VIRTUAL_TERMINAL_PROCESSING != 0
                    || SetConsoleMode(out, mode | ENABLE_VIRTUAL_TERMINAL_PROCESSING) != 0)
        }
    }

    pub fn size() -> Option<(u16, u16)> {
        // SAFETY: a standard handle and an out-struct of the right type.
        unsafe {
            let mut info: CONSOLE_SCREEN_BUFFER_INFO = std::mem::zeroed();
            if GetConsoleScreenBufferInfo(GetStdHandle(STD_OUTPUT_HANDLE), &mut info) == 0 {
                return None;
            }
            let w = info.srWindow;
            Some(((w.Right - w.Left + 1) as u16, (w.Bottom - w.Top + 1) as u16))
        }
    }

    pub fn detach_own_console() -> bool {
        let mut attached = [0u32; 2];
        // SAFETY: the buffer holds two ids and its length is given; FreeConsole takes nothing.
        unsafe { GetConsoleProcessList(attached.as_mut_ptr(), 2) == 1 && FreeConsole() != 0 }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_color_set_to_anything_but_empty_turns_colour_off() {
        use std::ffi::OsStr;
        assert!(super::color_allowed_by(None));
        assert!(super::color_allowed_by(Some(OsStr::new(""))));
        assert!(!super::color_allowed_by(Some(OsStr::new("1"))));
        assert!(!super::color_allowed_by(Some(OsStr::new("false"))));
    }
}
