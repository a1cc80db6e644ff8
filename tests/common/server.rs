//! A `steerlm` server process for tests and benches: started on a free port, its URL
//! read from the first line it prints, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Server {
    child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The server's peak resident memory in bytes (`VmHWM`).
    #[allow(dead_code)] // the tests use it, the benches sharing this file do not
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the server runs");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM in kB");
        kib * 1024
    }

    /// Sends SIGTERM and waits for the process to end: its exit status and what it
    /// wrote to stderr (when that was piped).
    #[allow(dead_code)] // the tests use it, the benches sharing this file do not
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        // SAFETY: kill with a child's pid and a valid signal number.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).expect("read the server's stderr");
        }
        (self.child.wait().expect("wait for the server"), stderr)
    }
}

/// Spawns `command` (a `steerlm serve...` listening on port 0) and waits for its
/// "... on http://ADDR ..." line.
pub fn spawn(mut command: Command) -> Server {
    let mut child = command.stdout(Stdio::piped()).spawn().expect("start the steerlm binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the server's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the server's first line {line:?}"))
        .to_owned();
    Server { child, url }
}

/// Connects to `address` (`host:port`) until a connection is answered at once (within
/// 300 ms: the server turning away a client over its share of connections) and returns
/// that answer. `request` is sent whole first, so the close is not a reset. Gives up, with
/// an empty answer, after 100 tries.
#[allow(dead_code)] // the tests use it, the benches sharing this file do not
pub fn answer_past_share(address: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    for _ in 0..100 {
        let mut connection = std::net::TcpStream::connect(address).unwrap();
        connection.write_all(request).unwrap();
        connection.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
        let mut bytes = Vec::new();
        if connection.read_to_end(&mut bytes).is_ok() {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    String::new()
}

/// Waits (up to 10 s) until `url` answers 200 to a GET.
#[allow(dead_code)] // the tests use it, the benches sharing this file do not
pub async fn wait_for_ok(url: &str) {
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
    for _ in 0..100 {
        if let Ok(response) = client.get(url).send().await
            && response.status().as_u16() == 200
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer 200");
}
