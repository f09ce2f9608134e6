//! Interactive kubectl for `kubectl attach` and `kubectl run -i` tests: a child whose stdout
//! lines arrive as they are printed and whose stdin the test writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::kubectl::Kubectl;
use super::wait_for;

/// A kubectl child whose stdout lines arrive on a channel; killed on drop.
pub struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    pub fn start(k: &Kubectl, args: &[&str]) -> Streaming {
        let mut child = k
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubectl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next line that satisfies `want`, within `timeout`.
    pub fn line(&self, timeout: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no {what} within {timeout:?}"),
            }
        }
    }

    pub fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl args` with `input` on its stdin (then closed): its status, stdout and stderr,
/// within 90 s.
pub fn run_with_input(k: &Kubectl, args: &[&str], input: &str) -> (ExitStatus, String, String) {
    let mut child = k
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
        let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
        let status = child.wait().expect("wait for kubectl");
        let _ = done_tx.send((status, out, err));
    });
    done_rx
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 90 s"))
}

/// `kubectl run -i --rm --restart=Never` (attach with stdinOnce) with input piped in: the
/// command reads it and answers, kubectl exits 0, and the pod is deleted after.
pub fn run_once_with_input(k: &Kubectl) {
    let (status, out, err) = run_with_input(
        k,
        &[
            "run",
            "-i",
            "--rm",
            "--restart=Never",
            "oneshot",
            "--image=busybox",
            "--",
            "sh",
            "-c",
            "read x; echo got $x",
        ],
        "hello\n",
    );
    assert!(
        status.success() && out.contains("got hello"),
        "kubectl run -i: {status:?} {out:?} {err:?}"
    );
    wait_for(Duration::from_secs(30), "oneshot deleted", || {
        let out = k.run(&["get", "pod", "oneshot"]);
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
    });
}
