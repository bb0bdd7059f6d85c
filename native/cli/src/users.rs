//! `stoker serve --users DIR`: the server stops once no process that uses it
//! is alive. Each process that starts or reuses the node's server (a Spark
//! JVM, a Python process) writes a file named for its pid into DIR; the
//! server checks them once a second, forgets those whose process is gone
//! (however it ended: SIGKILL leaves no time for clean-up), and stops when
//! none is left. A server started by an executor that was killed then does
//! not outlive it as an orphan, and one still used by another JVM is not
//! stopped with the JVM that started it.
//!
//! A process counts as gone when `/proc/PID` is missing or is a zombie (a
//! killed JVM whose parent has not reaped it yet). A pid the kernel reused
//! for an unrelated process keeps the server up until that process ends;
//! with Linux's pid space that is rare and costs only an idle server.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the users are checked.
const EVERY: Duration = Duration::from_secs(1);

/// Resolves once no process registered in `dir` is alive.
pub async fn none_left(dir: PathBuf) {
    loop {
        tokio::time::sleep(EVERY).await;
        if live_users(&dir) == 0 {
            return;
        }
    }
}

/// Counts the live users in `dir`, removing the files of those gone.
pub fn live_users(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut live = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if alive(pid) {
            live += 1;
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    live
}

fn alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        // No procfs to ask: never stop for want of users.
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and
        // may itself hold spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_whose_process_is_gone_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(std::process::id().to_string()), "").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        std::fs::write(dir.path().join(child.id().to_string()), "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        assert_eq!(live_users(dir.path()), 2);
        child.kill().unwrap();
        // Not yet reaped: a zombie is gone too.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(live_users(dir.path()), 1);
        assert!(!dir.path().join(child.id().to_string()).exists());
        child.wait().unwrap();
        assert_eq!(live_users(dir.path()), 1);
        assert_eq!(live_users(&dir.path().join("missing")), 0);
    }
}
