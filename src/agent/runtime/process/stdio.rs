//! A process container's stdio, kept attachable (`kubectl attach`): its output is copied into
//! the CRI log and, as it arrives, to every attached client; its stdin pipe stays open when the
//! spec asks for one (`stdin: true`) until the first client detaches if `stdinOnce`; a
//! `tty: true` container gets a pseudo-terminal (stdin, stdout and stderr on its slave side,
//! the output as `stdout` in the log, resizes applied to its master side).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::super::{AttachInput, AttachOptions, AttachOutput, Attachment, ContainerSpec};
use super::{RuntimeError, runtime_error};
use crate::agent::logs::cri_line;

/// Longest log line written as one record; longer output is split into partial (P) records.
const MAX_LOG_LINE: usize = 16 * 1024;
/// Output chunks an attached client may fall behind by before it misses some.
const LIVE_BACKLOG: usize = 256;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// How a container's stdio is wired before it is spawned.
pub struct Wiring {
    /// The terminal's master side (tty containers).
    terminal: Option<OwnedFd>,
    stdin: bool,
    stdin_once: bool,
}

/// Sets the command's stdio: pipes, or a new pseudo-terminal that becomes the process's
/// controlling terminal in a session of its own (so the process leads its own group, as
/// `process_group(0)` gives the others).
pub fn wire(
    command: &mut tokio::process::Command,
    spec: &ContainerSpec,
) -> Result<Wiring, RuntimeError> {
    let wiring = Wiring {
        terminal: None,
        stdin: spec.stdin,
        stdin_once: spec.stdin_once,
    };
    if !spec.tty {
        command
            .stdin(if spec.stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.process_group(0);
        return Ok(wiring);
    }
    let (master, slave) = open_terminal().map_err(|e| runtime_error("opening a terminal", e))?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| runtime_error("duplicating the terminal", e))
    };
    command
        .stdin(dup(&slave)?)
        .stdout(dup(&slave)?)
        .stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the terminal's slave by now.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(Wiring {
        terminal: Some(master),
        ..wiring
    })
}

fn open_terminal() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given ints; name/termios/size are null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

/// A running container's attachable stdio.
pub struct ContainerIo {
    /// Live output; None once the process's output has ended.
    live: Mutex<Option<broadcast::Sender<AttachOutput>>>,
    /// The process's stdin (None: it has none, or it was closed).
    stdin: Arc<tokio::sync::Mutex<Option<Writer>>>,
    has_stdin: bool,
    stdin_once: bool,
    terminal: Option<OwnedFd>,
}

impl ContainerIo {
    /// Takes the spawned child's stdio and copies its output into `log`; the returned tasks
    /// end with the output.
    pub fn supervise(
        wiring: Wiring,
        child: &mut tokio::process::Child,
        log: tokio::fs::File,
    ) -> Result<(Arc<ContainerIo>, Vec<JoinHandle<()>>), RuntimeError> {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let log = Arc::new(tokio::sync::Mutex::new(log));
        let mut outputs: Vec<(Reader, Stream)> = Vec::new();
        let stdin: Option<Writer> = match &wiring.terminal {
            Some(master) => {
                let file = |fd: &OwnedFd| -> Result<tokio::fs::File, RuntimeError> {
                    let fd = fd
                        .try_clone()
                        .map_err(|e| runtime_error("duplicating the terminal", e))?;
                    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
                };
                // Separate descriptors: a tokio File runs one operation at a time, and a
                // read waits for output while stdin must still be written.
                outputs.push((Box::new(file(master)?), Stream::Stdout));
                wiring
                    .stdin
                    .then(|| file(master).map(|f| Box::new(f) as Writer))
                    .transpose()?
            }
            None => {
                if let Some(out) = child.stdout.take() {
                    outputs.push((Box::new(out), Stream::Stdout));
                }
                if let Some(err) = child.stderr.take() {
                    outputs.push((Box::new(err), Stream::Stderr));
                }
                child.stdin.take().map(|s| Box::new(s) as Writer)
            }
        };
        let copies = outputs
            .into_iter()
            .map(|(reader, which)| {
                tokio::spawn(copy_output(reader, which, log.clone(), live.clone()))
            })
            .collect();
        let io = ContainerIo {
            live: Mutex::new(Some(live)),
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            has_stdin: wiring.stdin,
            stdin_once: wiring.stdin_once,
            terminal: wiring.terminal,
        };
        Ok((Arc::new(io), copies))
    }

    /// The output ended (the copies are done): attached clients see their streams end.
    pub fn output_ended(&self) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn attach(&self, name: &str, options: AttachOptions) -> Result<Attachment, RuntimeError> {
        if options.stdin && !self.has_stdin {
            return Err(RuntimeError::Start {
                reason: "AttachError",
                message: format!(
                    "container {name} has no stdin to attach to (its spec does not set stdin: true)"
                ),
            });
        }
        let (out_tx, out_rx) = mpsc::channel(64);
        let live = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(broadcast::Sender::subscribe);
        if let Some(mut live) = live {
            tokio::spawn(async move {
                loop {
                    // A client that left is let go even while the process prints nothing.
                    let received = tokio::select! {
                        received = live.recv() => received,
                        () = out_tx.closed() => break,
                    };
                    let chunk = match received {
                        Ok(chunk) => chunk,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    let wanted = match chunk {
                        AttachOutput::Stdout(_) => options.stdout,
                        AttachOutput::Stderr(_) => options.stderr,
                    };
                    if wanted && out_tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            });
        }
        let (in_tx, mut in_rx) = mpsc::channel::<AttachInput>(64);
        let stdin = self.stdin.clone();
        let stdin_once = self.stdin_once;
        let terminal = self
            .terminal
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .filter(|_| options.tty);
        tokio::spawn(async move {
            while let Some(input) = in_rx.recv().await {
                match input {
                    AttachInput::Stdin(data) if options.stdin => {
                        let mut stdin = stdin.lock().await;
                        if let Some(writer) = stdin.as_mut()
                            && (writer.write_all(&data).await.is_err()
                                || writer.flush().await.is_err())
                        {
                            *stdin = None;
                        }
                    }
                    AttachInput::Resize { width, height } => {
                        if let Some(fd) = &terminal {
                            resize(fd, width, height);
                        }
                    }
                    AttachInput::CloseStdin => break,
                    AttachInput::Stdin(_) => {}
                }
            }
            // This client's stdin is over: with stdinOnce, so is the process's.
            if options.stdin && stdin_once {
                stdin.lock().await.take();
            }
        });
        Ok(Attachment {
            output: out_rx,
            input: in_tx,
        })
    }
}

fn resize(terminal: &OwnedFd, width: u16, height: u16) {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer; the descriptor is ours.
    unsafe {
        libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn chunk(self, data: &[u8]) -> AttachOutput {
        match self {
            Stream::Stdout => AttachOutput::Stdout(data.to_vec()),
            Stream::Stderr => AttachOutput::Stderr(data.to_vec()),
        }
    }
}

/// Copies one output stream to attached clients as it arrives and into the CRI log line by
/// line. A terminal's master reads EIO once the last slave closes: that is its end too.
async fn copy_output(
    mut stream: impl AsyncRead + Unpin,
    which: Stream,
    log: Arc<tokio::sync::Mutex<tokio::fs::File>>,
    live: broadcast::Sender<AttachOutput>,
) {
    let mut buffer = vec![0u8; MAX_LOG_LINE];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    loop {
        let n = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // No receivers is fine: nobody is attached.
        let _ = live.send(which.chunk(&buffer[..n]));
        line.extend_from_slice(&buffer[..n]);
        let mut records = Vec::new();
        let mut start = 0;
        while let Some(end) = line[start..].iter().position(|b| *b == b'\n') {
            log_records(&line[start..start + end], true, which, &mut records);
            start += end + 1;
        }
        line.drain(..start);
        if line.len() >= MAX_LOG_LINE {
            log_records(&line, false, which, &mut records);
            line.clear();
        }
        if !records.is_empty() && append(&log, &records).await.is_err() {
            return;
        }
    }
    if !line.is_empty() {
        let mut records = Vec::new();
        log_records(&line, false, which, &mut records);
        let _ = append(&log, &records).await;
    }
}

/// Appends records to the log and waits until they are written: a tokio `File` hands writes
/// to a background thread, and without the flush the container could be reported exited (and
/// its attached clients see the end) before its last lines are in the file `kubectl logs` reads.
async fn append(log: &tokio::sync::Mutex<tokio::fs::File>, records: &[u8]) -> std::io::Result<()> {
    let mut log = log.lock().await;
    log.write_all(records).await?;
    log.flush().await
}

/// `line` as CRI log records: partial (P) ones of at most `MAX_LOG_LINE` bytes, the last one
/// full (F) when the line is `complete`.
fn log_records(line: &[u8], complete: bool, which: Stream, out: &mut Vec<u8>) {
    let mut rest = line;
    while rest.len() > MAX_LOG_LINE {
        out.extend(cri_line(
            SystemTime::now(),
            which.name(),
            false,
            &rest[..MAX_LOG_LINE],
        ));
        rest = &rest[MAX_LOG_LINE..];
    }
    out.extend(cri_line(SystemTime::now(), which.name(), complete, rest));
}
