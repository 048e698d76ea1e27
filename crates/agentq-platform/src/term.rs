//! The terminal agentq's interactive views draw on, and the console window a program started
//! without one is given.

/// Columns and rows of the terminal standard output goes to, if it is one.
pub fn size() -> Option<(u16, u16)> {
    imp::size().filter(|(c, r)| *c > 0 && *r > 0)
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
        CONSOLE_SCREEN_BUFFER_INFO, FreeConsole, GetConsoleProcessList, GetConsoleScreenBufferInfo,
        GetStdHandle, STD_OUTPUT_HANDLE,
    };

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
