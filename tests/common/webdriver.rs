//! Headless Debian Chromium driven through chromedriver with the W3C WebDriver protocol (JSON
//! over plain HTTP on loopback), spoken with a few lines of HTTP/1.1 so tests need no client
//! crate. One `Browser` = one chromedriver process + one session with a fresh profile; both
//! end on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// The browser profile and chromedriver's log.
    pub dir: tempfile::TempDir,
}

/// Flags that work on these machines (root, no GPU, no network beyond loopback). The API
/// serves the cluster's own CA, which the browser does not know: certificate errors are
/// ignored for the test only.
fn chromium_args(profile: &std::path::Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 exchange with chromedriver; returns the response's JSON `value`.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // chromedriver says `Connection: close` but keeps the socket open: read the header, then
    // exactly Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let header_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the header".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..header_end]).into_owned();
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = raw[header_end..].to_vec();
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            stream.read_to_end(&mut body).map_err(|e| e.to_string())?;
        }
    }
    let rest = String::from_utf8_lossy(&body).into_owned();
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&rest)
    } else {
        rest
    };
    let parsed: Value = serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload:?}"))?;
    let status_ok = head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2");
    if !status_ok {
        return Err(format!("{method} {path}: {}", parsed["value"]));
    }
    Ok(parsed["value"].clone())
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        for program in ["chromium", "chromedriver"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "{program} is missing: apt-get install -y chromium chromium-driver (.ci/run does)"
            );
        }
        let dir = tempfile::tempdir().expect("browser dir");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        // Owned from here on: a panic below still ends chromedriver (Drop).
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while call(port, "GET", "/status", None)
            .map(|v| v["ready"] != json!(true))
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = browser.dir.path().join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": chromium_args(&profile)},
        }}});
        let session = call(port, "POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        browser.session = session["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        browser
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(self.port, method, &path, body).unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub fn navigate(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its
    /// result.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// The rendered text of the first element matching `selector` ("" when absent).
    pub fn text(&self, selector: &str) -> String {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            &[json!(selector)],
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Whether the element matching `selector` is shown (present and not `hidden`).
    pub fn visible(&self, selector: &str) -> bool {
        self.execute(
            "const e = document.querySelector(arguments[0]); return !!e && !e.hidden && e.offsetParent !== null;",
            &[json!(selector)],
        ) == json!(true)
    }

    fn element(&self, selector: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": selector})),
        );
        match found[ELEMENT].as_str() {
            Some(id) => id.to_string(),
            None => panic!("no element {selector}: {found}"),
        }
    }

    /// Replaces the value of the input at `selector` with `text`, as typed keys.
    pub fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector);
        self.session_call("POST", &format!("/element/{id}/clear"), Some(&json!({})));
        if !text.is_empty() {
            self.session_call(
                "POST",
                &format!("/element/{id}/value"),
                Some(&json!({"text": text})),
            );
        }
    }

    pub fn click(&self, selector: &str) {
        let id = self.element(selector);
        self.session_call("POST", &format!("/element/{id}/click"), Some(&json!({})));
    }

    /// Waits until `check` holds for the page, or panics with `what` and the page's text.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Browser) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    self.text("body")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = call(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
