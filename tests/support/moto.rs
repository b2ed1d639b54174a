//! A moto S3 server for tests and benchmarks: started on a free port of
//! 127.0.0.1, stopped when dropped. Included with `#[path]` by the tests
//! and the object store benchmark. Uses std only.

#![allow(dead_code, reason = "each includer uses part of this helper")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to answer after it was started.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `moto_server`.
pub struct Moto {
    child: Child,
    /// Closing this tells the wrapper shell to stop moto, also when this
    /// process dies without dropping the `Moto`.
    stdin: Option<ChildStdin>,
    port: u16,
    log: std::path::PathBuf,
}

impl Moto {
    /// Start moto and wait until it answers. Panics, saying how to install
    /// it, when it cannot be started: a test that needs S3 fails rather
    /// than skips.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free local port")
            .port();
        let log = std::env::temp_dir().join(format!("moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("moto log file");
        // The shell installs moto with pip when it is missing (so the tests
        // run on a fresh machine), stops moto when its stdin closes, so no server outlives
        // the process that started it, and exits with moto's status when
        // moto fails to start.
        // (A background job's stdin is /dev/null, hence the copy on fd 3.)
        let script = r#"
            exec 3<&0
            if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
                echo "moto[server] is missing: installing it with pip" >&2
                flock "${TMPDIR:-/tmp}/daramjwee-moto-install.lock" \
                    python3 -m pip install --quiet 'moto[server]' >&2 <&-
            fi
            python3 -m moto.server -H 127.0.0.1 -p "$0" <&- & pid=$!
            ( read -r _ <&3; kill "$pid" 2>/dev/null ) &
            wait "$pid"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("moto log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start moto_server: {e}"));
        let stdin = child.stdin.take();
        let mut moto = Moto {
            child,
            stdin,
            port,
            log,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited ({status}) before answering; install it with \
                     `pip install 'moto[server]'`. Its output:\n{}",
                    moto.log_text()
                );
            }
            if moto.request("GET", "/", "").is_ok() {
                // Its output is only wanted when it fails to start.
                let _ = std::fs::remove_file(&moto.log);
                return moto;
            }
            if started.elapsed() > STARTUP {
                panic!(
                    "moto_server did not answer on port {port} within {STARTUP:?}; install it \
                     with `pip install 'moto[server]'`. Its output:\n{}",
                    moto.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's base URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Builder options for an S3 tier talking to this server.
    pub fn s3_options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_virtual_hosted_style_request", "false".into()),
        ]
    }

    /// Create `bucket` (at least three characters).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = self
            .request("PUT", &format!("/{bucket}"), "")
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
    }

    /// Multipart uploads started in `bucket` and neither completed nor
    /// aborted.
    pub fn pending_uploads(&self, bucket: &str) -> usize {
        let (status, body) = self
            .request("GET", &format!("/{bucket}?uploads"), "")
            .unwrap_or_else(|e| panic!("listing uploads of {bucket}: {e}"));
        assert_eq!(status, 200, "listing uploads of {bucket}: {body}");
        body.matches("<Upload>").count()
    }

    /// One HTTP/1.1 request; the status code and the body as text.
    fn request(&self, method: &str, target: &str, body: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
