//! Just enough of QMP (QEMU's JSON control protocol, one object per line) to stop a machine:
//! read the greeting, leave capabilities negotiation, run one command.

use std::io;
use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Runs `command` (e.g. "system_powerdown", "quit") on the QMP socket at `path`.
pub async fn execute(path: &Path, command: &str) -> io::Result<()> {
    let s = UnixStream::connect(path).await?;
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = next_object(&mut lines).await?;
    if greeting.get("QMP").is_none() {
        return Err(invalid(format!("not a QMP greeting: {greeting}")));
    }
    for execute in ["qmp_capabilities", command] {
        let mut line = json!({ "execute": execute }).to_string();
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        // Events may come before the answer.
        loop {
            let reply = next_object(&mut lines).await?;
            if reply.get("return").is_some() {
                break;
            }
            if let Some(err) = reply.get("error") {
                return Err(io::Error::other(format!("QMP {execute}: {err}")));
            }
        }
    }
    Ok(())
}

async fn next_object<R>(lines: &mut tokio::io::Lines<R>) -> io::Result<Value>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "QMP closed"))?;
    serde_json::from_str(&line).map_err(|e| invalid(format!("bad QMP line {line:?}: {e}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn negotiates_and_skips_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&line).unwrap();
                seen.push(v["execute"].as_str().unwrap().to_string());
                if seen.len() == 2 {
                    w.write_all(b"{\"event\": \"POWERDOWN\"}\n").await.unwrap();
                }
                w.write_all(b"{\"return\": {}}\n").await.unwrap();
            }
            seen
        });
        execute(&path, "system_powerdown").await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            ["qmp_capabilities", "system_powerdown"]
        );
    }
}
