//! External commands (curl, skopeo, python3, the registry-guard CLI) run under a deadline,
//! their output drained by threads so a chatty child never blocks on a pipe; past the
//! deadline the child is killed by its pid.

use super::{bin, wait_for};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Deadline of one external command (a 64 MiB push over loopback takes a second or two).
pub const STEP: Duration = Duration::from_secs(60);

/// Runs `cmd` with `stdin` until it exits or `limit` passes (then it is killed). Returns
/// the output and whether it exited by itself.
pub fn run_bounded_in(cmd: &mut Command, stdin: Stdio, limit: Duration) -> (Output, bool) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let exited = wait_for(limit, || child.try_wait().ok().flatten());
    let status = match exited {
        Some(st) => st,
        None => {
            let _ = child.kill();
            child.wait().unwrap()
        }
    };
    (
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        },
        exited.is_some(),
    )
}

/// [`run_bounded_in`] with an empty stdin.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (Output, bool) {
    run_bounded_in(cmd, Stdio::null(), limit)
}

/// Runs `cmd` to its end within `limit`, stdin empty.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    run_in(cmd, Stdio::null(), limit)
}

/// Runs `cmd` to its end within `limit`; past it the child is killed by its pid and the
/// test fails.
pub fn run_in(cmd: &mut Command, stdin: Stdio, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let (out, exited) = run_bounded_in(cmd, stdin, limit);
    assert!(exited, "{what} did not finish within {limit:?}");
    out
}

/// Asserts a command succeeded; returns its stdout.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`run_cli`], for commands that might not exit by themselves (`serve`): the
/// process is killed after `limit`. Returns the output and whether it exited by itself.
pub fn run_cli_for(args: &[&str], cwd: &Path, limit: Duration) -> (Output, bool) {
    run_bounded(Command::new(bin()).args(args).current_dir(cwd), limit)
}

/// Runs `registry-guard` with arguments, returning its output.
pub fn run_cli(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run registry-guard")
}

/// Runs the binary with `stdin` as its standard input, killed after 60 s.
pub fn cli_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run registry-guard");
    // A command that fails before reading its stdin closes the pipe: not an error here.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().unwrap()
}

/// Bytes as text, for assertion messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
